"""Recurrent cells: each is its parameters, its state (a NamedTuple) and one time step.

Today one cell, d2l's LSTM (:mod:`lstm_jax.cells.lstm`); the stacked model in
:mod:`lstm_jax.models` and everything above it never ask which cell they run.
"""

from lstm_jax.cells import lstm  # noqa: F401  (the registry: lstm_jax.cells.lstm)

NAMES = ("lstm",)
