"""d2l's LSTM cell as pure functions: its parameters, its state and one time step.

The stacked language model around it (embedding, layers, dropout, head) is
:mod:`lstm_jax.models`; its fast path is :mod:`lstm_jax.fast_lstm`.
Shapes are in the names: B batch, H hidden units, D inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# d2l's 14 arrays of a one-layer model, in d2l's order: input, forget, output gate, candidate, head.
PARAM_NAMES = ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
               "W_xc", "W_hc", "b_c", "W_hq", "b_q")
LAYER_NAMES = PARAM_NAMES[:12]  # one layer's gates
GATES = ("i", "f", "o", "c")


class LSTMState(NamedTuple):
    """The recurrent state, d2l's ``(H, C)`` for every layer: each (B, L, H)."""

    h: jax.Array
    c: jax.Array


def init_layer(keys, input_size: int, num_hiddens: int) -> dict:
    """One layer's gates as d2l's ``get_lstm_params``: weights ~ N(0, 0.01^2), zero biases.

    ``keys`` has one key per name of ``LAYER_NAMES`` (d2l draws one per array).
    """
    keys = dict(zip(LAYER_NAMES, keys))
    out = {}
    for g in GATES:
        out[f"W_x{g}"] = 0.01 * jax.random.normal(keys[f"W_x{g}"], (input_size, num_hiddens))
        out[f"W_h{g}"] = 0.01 * jax.random.normal(keys[f"W_h{g}"], (num_hiddens, num_hiddens))
        out[f"b_{g}"] = jnp.zeros((num_hiddens,))
    return {n: out[n] for n in LAYER_NAMES}


def lstm_step(params: dict, carry: tuple, x_t: jax.Array) -> tuple[tuple, jax.Array]:
    """One time step of one layer: ``carry = (h, c)``, each (B, H).

    ``x_t`` is either token ids (B,) or input vectors (B, D). d2l multiplies a
    one-hot input by ``W_x*``; taking row ``x_t`` of ``W_x*`` is the same
    result without the (B, V) x (V, H) product.
    """
    p = params
    h, c = carry
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        x = lambda g: jnp.take(p[f"W_x{g}"], x_t, axis=0)
    else:
        x = lambda g: x_t @ p[f"W_x{g}"]
    I = jax.nn.sigmoid(x("i") + h @ p["W_hi"] + p["b_i"])
    F = jax.nn.sigmoid(x("f") + h @ p["W_hf"] + p["b_f"])
    O = jax.nn.sigmoid(x("o") + h @ p["W_ho"] + p["b_o"])
    C_tilde = jnp.tanh(x("c") + h @ p["W_hc"] + p["b_c"])
    c = F * c + I * C_tilde
    h = O * jnp.tanh(c)
    return (h, c), h
