"""LSTM language models in JAX: d2l's LSTM chapter, from scratch and with flax, and beyond.

Modules: ``cells`` (a recurrent cell's parameters, state and step), ``models``
(the stacked language model over a cell; flax's variant), ``engine`` (the
LSTM's hand-written backward pass), ``data`` and ``batches`` (corpora,
vocabulary, minibatches), ``steps`` (the pure, jitted train and eval steps),
``experiment`` (a run's parts), ``train`` (the one training loop and its CLI),
``checkpoint``, ``predict``, ``evaluate``, ``sweep``, ``metrics``,
``distributed``. Importing the package runs nothing.
"""

__version__ = "0.3.0"
