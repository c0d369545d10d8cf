"""LSTM language models in JAX: d2l's LSTM chapter, from scratch and with flax, and beyond.

Importing the package runs nothing; README.md's Layout says which module holds what.
"""

__version__ = "0.4.0"
