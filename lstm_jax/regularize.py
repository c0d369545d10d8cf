"""Dropout the ways recurrent language models use it, drawn in one place for every cell and path.

Connections are numbered: layer l's input is site l (layer 0's only with an embedding), the head's
input site L. Every implementation (the cell's scan, the engine, flax's cells) draws its masks here,
time-major (T, B, D), so the same key drops the same units in all of them.

- per-step masks (Zaremba et al. 2014): a fresh mask at every time step, off the recurrence;
- locked, or variational, masks (Gal & Ghahramani 2016; AWD-LSTM's ``LockedDropout``): one mask per
  sequence, the same at each of its time steps;
- embedding dropout (AWD's ``embedded_dropout``): whole rows of the embedding table, so a word is
  dropped wherever it occurs in the minibatch (a tied head keeps the whole table);
- weight drop (AWD's ``WeightDrop``, DropConnect on the recurrent weights): each layer's ``W_h<g>``
  masked once per minibatch, the same mask at every time step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_EMBED_SITE, _WEIGHT_SITE = 1_000, 2_000  # key folds apart from the connections'


class Dropout(NamedTuple):
    """The rates of a model's dropouts: a value, so compiled steps take it as a static argument."""

    input: float = 0.0  # the embedding's output (site 0)
    hidden: float = 0.0  # between layers
    output: float = 0.0  # before the head
    locked: bool = False  # one mask per sequence instead of per time step
    embed: float = 0.0  # rows of the embedding table
    weight: float = 0.0  # the recurrent weights

    def at(self, site: int, num_layers: int) -> float:
        return self.input if site == 0 else self.output if site == num_layers else self.hidden


def dropout_mask(key: jax.Array, site: int, shape: tuple, rate: float, dtype, locked: bool = False) -> jax.Array:
    """Inverted dropout's multiplier at ``site``: 0 or 1 / (1 - rate) per unit; ``locked``: per
    sequence, shape (1, B, D) for a (T, B, D) input."""
    keep = jax.random.bernoulli(jax.random.fold_in(key, site), 1 - rate, (1, *shape[1:]) if locked else shape)
    return jnp.where(keep, 1 / (1 - rate), 0).astype(dtype)


def dropout(key: jax.Array | None, site: int, x_TxBxD: jax.Array, rate: float, locked: bool = False) -> jax.Array:
    """``x`` times its mask; ``key=None`` (evaluation, generation) or ``rate=0``: ``x``."""
    if key is None or rate == 0:
        return x_TxBxD
    return x_TxBxD * dropout_mask(key, site, x_TxBxD.shape, rate, x_TxBxD.dtype, locked)


def drop_embedding(key: jax.Array | None, table_VxE: jax.Array, rate: float) -> jax.Array:
    """The embedding table with whole rows (words) zeroed, the rest scaled by 1 / (1 - rate)."""
    if key is None or rate == 0:
        return table_VxE
    return table_VxE * dropout_mask(key, _EMBED_SITE, (table_VxE.shape[0], 1), rate, table_VxE.dtype)


def drop_weights(key: jax.Array | None, params: dict, names: tuple[str, ...], rate: float, layer: int) -> dict:
    """One layer's parameters with its recurrent weights ``names`` masked (DropConnect)."""
    if key is None or rate == 0:
        return params
    sites = {n: _WEIGHT_SITE + 16 * layer + i for i, n in enumerate(names)}
    return {k: v * dropout_mask(key, sites[k], v.shape, rate, v.dtype) if k in sites else v
            for k, v in params.items()}
