"""The LSTM from scratch, as pure functions (d2l's ``get_lstm_params`` and ``lstm``).

Shapes are in the names: B batch, T time steps, H hidden units, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]

# d2l's 14 arrays, in d2l's order: input, forget, output gate, candidate, head.
PARAM_NAMES = ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
               "W_xc", "W_hc", "b_c", "W_hq", "b_q")
GATES = ("i", "f", "o", "c")


class LSTMState(NamedTuple):
    """The recurrent state, d2l's ``(H, C)``: hidden state and memory cell, each (B, H)."""

    h: jax.Array
    c: jax.Array


def init_params(key: jax.Array, vocab_size: int, num_hiddens: int) -> Params:
    """Weights ~ N(0, 0.01^2) and zero biases, as d2l's ``get_lstm_params``."""
    V, H = vocab_size, num_hiddens
    shapes = {}
    for g in GATES:
        shapes[f"W_x{g}"], shapes[f"W_h{g}"], shapes[f"b_{g}"] = (V, H), (H, H), (H,)
    shapes["W_hq"], shapes["b_q"] = (H, V), (V,)
    keys = dict(zip(PARAM_NAMES, jax.random.split(key, len(PARAM_NAMES))))
    return {
        name: (jnp.zeros(shape) if name.startswith("b_")
               else 0.01 * jax.random.normal(keys[name], shape))
        for name, shape in shapes.items()
    }


def lstm_step(params: Params, carry: LSTMState, x_t: jax.Array) -> tuple[LSTMState, jax.Array]:
    """One time step for a batch of token ids ``x_t`` (B,).

    d2l multiplies a one-hot input by ``W_x*``; taking row ``x_t`` of ``W_x*``
    gives the same result without the (B, V) x (V, H) product: same math, far
    fewer FLOPs.
    """
    p = params
    h, c = carry
    I = jax.nn.sigmoid(jnp.take(p["W_xi"], x_t, axis=0) + h @ p["W_hi"] + p["b_i"])
    F = jax.nn.sigmoid(jnp.take(p["W_xf"], x_t, axis=0) + h @ p["W_hf"] + p["b_f"])
    O = jax.nn.sigmoid(jnp.take(p["W_xo"], x_t, axis=0) + h @ p["W_ho"] + p["b_o"])
    C_tilde = jnp.tanh(jnp.take(p["W_xc"], x_t, axis=0) + h @ p["W_hc"] + p["b_c"])
    c = F * c + I * C_tilde
    h = O * jnp.tanh(c)
    return LSTMState(h, c), h


def lstm_sequence(params: Params, state: LSTMState, tokens_BxT: jax.Array
                  ) -> tuple[jax.Array, LSTMState]:
    """Run ``lstm_step`` over time with ``lax.scan``; returns hidden states (B, T, H)."""
    state, h_TxBxH = jax.lax.scan(lambda s, x: lstm_step(params, s, x), state, tokens_BxT.T)
    return h_TxBxH.transpose(1, 0, 2), state


def apply(params: Params, state: LSTMState, tokens_BxT: jax.Array
          ) -> tuple[jax.Array, LSTMState]:
    """Logits (B, T, V) and the final state; the output layer runs once, after the scan."""
    h_BxTxH, state = lstm_sequence(params, state, tokens_BxT)
    return h_BxTxH @ params["W_hq"] + params["b_q"], state
