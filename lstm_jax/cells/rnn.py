"""d2l 8.5's recurrent network (Elman 1990): ``H = tanh(X W_xh + H W_hh + b_h)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, Engine, HState, gate, gate_params, step_from


def rnn_signals(p: dict, s: HState, x_t: jax.Array) -> dict:
    return dict(h=jnp.tanh(gate(p, s[0], x_t, "h")))


rnn_step = step_from(rnn_signals, HState)


# d2l's get_params for the hidden layer: W_xh, W_hh ~ N(0, 0.01^2), b_h = 0
RNN = Cell("rnn", HState, lambda key, D, o: gate_params(key, D, o.num_hiddens, "h"),
           lambda o: HState(o.num_hiddens), rnn_step,
           Engine(lambda p: (p["W_xh"], p["b_h"]), lambda p: p["W_hh"], lambda p: {},
                  lambda q, xp, hh, s: HState(jnp.tanh(xp + hh))), "h", signals=rnn_signals)
CELLS = (RNN,)
