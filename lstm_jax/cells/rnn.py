"""d2l 8.5's recurrent network: ``H = tanh(X W_xh + H W_hh + b_h)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, Engine, HState, normal, project


def init(key, D: int, o) -> dict:
    """d2l's ``get_params`` for the hidden layer: weights ~ N(0, 0.01^2), zero bias."""
    k = jax.random.split(key, 2)
    H = o.num_hiddens
    return {"W_xh": normal(k[0], (D, H)), "W_hh": normal(k[1], (H, H)), "b_h": jnp.zeros((H,))}


def rnn_step(p: dict, s: HState, x_t: jax.Array):
    h = jnp.tanh(project(p["W_xh"], x_t) + s[0] @ p["W_hh"] + p["b_h"])
    return HState(h), h


RNN = Cell("rnn", HState, init, lambda o: HState(o.num_hiddens), rnn_step,
           Engine(lambda p: (p["W_xh"], p["b_h"]), lambda p: p["W_hh"], lambda p: {},
                  lambda q, xp, hh, s: HState(jnp.tanh(xp + hh))),
           "d2l 8.5 (Elman 1990)")
CELLS = (RNN,)
