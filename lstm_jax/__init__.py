"""LSTM language models in JAX: d2l's LSTM chapter, from scratch and with flax.

Modules: ``data`` (corpus, vocabulary, minibatches), ``lstm`` (the scratch
math), ``models`` (both variants behind one interface), ``train`` (training
and its CLI), ``predict`` (continuations). Nothing is imported here, so
``python -m lstm_jax.train`` never imports itself twice.
"""

__version__ = "0.1.0"
