"""Gated recurrent units: d2l's (Cho et al. 2014) and the reset-after form of cuDNN, PyTorch,
flax and Keras. Both carry ``h`` only; ``H = Z * H + (1 - Z) * H~``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, Engine, HState, gate, gate_params, project, stack, step_from


def gru_signals(p: dict, s: HState, x_t: jax.Array) -> dict:
    """d2l 10.2: the reset gate scales H *before* the candidate's product."""
    Z, R = (jax.nn.sigmoid(gate(p, s[0], x_t, g)) for g in "zr")
    H_tilde = jnp.tanh(project(p["W_xh"], x_t) + (R * s[0]) @ p["W_hh"] + p["b_h"])
    h = Z * s[0] + (1 - Z) * H_tilde
    return dict(z=Z, r=R, h_tilde=H_tilde, h=h)


gru_step = step_from(gru_signals, HState)

# d2l 10.2 (Cho et al. 2014)
GRU = Cell("gru", HState, lambda key, D, o: gate_params(key, D, o.num_hiddens, "zrh"),
           lambda o: HState(o.num_hiddens), gru_step, gates="zrh", signals=gru_signals, gate_signals=("z", "r"))


def gru_reset_after_signals(p: dict, s: HState, x_t: jax.Array) -> dict:
    """``n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))``: the reset gate scales the product's result."""
    R, Z = (jax.nn.sigmoid(gate(p, s[0], x_t, g)) for g in "rz")
    N = jnp.tanh(project(p["W_xn"], x_t) + p["b_n"] + R * (s[0] @ p["W_hn"] + p["b_hn"]))
    h = Z * s[0] + (1 - Z) * N
    return dict(z=Z, r=R, h_tilde=N, h=h)  # h_tilde: PyTorch's n


gru_reset_after_step = step_from(gru_reset_after_signals, HState)


def _reset_after_pointwise(q, xp, hh, s):
    (xr, xz, xn), (hr, hz, hn) = jnp.split(xp, 3, axis=-1), jnp.split(hh, 3, axis=-1)
    R, Z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    N = jnp.tanh(xn + R * (hn + q["b_hn"]))
    return HState(Z * s.h + (1 - Z) * N)


# Cho et al. 2014 with the reset after the product (cuDNN, PyTorch nn.GRU, flax GRUCell)
GRU_RESET_AFTER = Cell(
    "gru_reset_after", HState,
    lambda key, D, o: {**gate_params(key, D, o.num_hiddens, "rzn"), "b_hn": jnp.zeros((o.num_hiddens,))},
    lambda o: HState(o.num_hiddens), gru_reset_after_step,
    Engine(lambda p: (stack(p, "W_x", "rzn"), stack(p, "b_", "rzn")), lambda p: stack(p, "W_h", "rzn"),
           lambda p: {"b_hn": p["b_hn"]}, _reset_after_pointwise, additive=False), "rzn",
    signals=gru_reset_after_signals, gate_signals=("z", "r"))
CELLS = (GRU, GRU_RESET_AFTER)
