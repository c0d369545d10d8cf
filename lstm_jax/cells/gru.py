"""Gated recurrent units: d2l's (Cho et al. 2014) and the reset-after form of cuDNN, PyTorch,
flax and Keras. Both carry ``h`` only; ``H = Z * H + (1 - Z) * H~``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, Engine, HState, normal, project, stack


def _init(key, D: int, o, names: str, extra=()) -> dict:
    """Weights ~ N(0, 0.01^2) and zero biases, as d2l's ``get_params``."""
    keys = iter(jax.random.split(key, 3 * len(names)))
    H, p = o.num_hiddens, {}
    for g in names:
        p[f"W_x{g}"], p[f"W_h{g}"] = normal(next(keys), (D, H)), normal(next(keys), (H, H))
        next(keys)
        p[f"b_{g}"] = jnp.zeros((H,))
    return {**p, **{name: jnp.zeros((H,)) for name in extra}}


def _gate(p, s, x_t, g):
    return project(p[f"W_x{g}"], x_t) + s[0] @ p[f"W_h{g}"] + p[f"b_{g}"]


def gru_step(p: dict, s: HState, x_t: jax.Array):
    """d2l 10.2: the reset gate scales H *before* the candidate's product."""
    Z, R = jax.nn.sigmoid(_gate(p, s, x_t, "z")), jax.nn.sigmoid(_gate(p, s, x_t, "r"))
    H_tilde = jnp.tanh(project(p["W_xh"], x_t) + (R * s[0]) @ p["W_hh"] + p["b_h"])
    h = Z * s[0] + (1 - Z) * H_tilde
    return HState(h), h


GRU = Cell("gru", HState, lambda key, D, o: _init(key, D, o, "zrh"), lambda o: HState(o.num_hiddens),
           gru_step, None, "d2l 10.2 (Cho et al. 2014)")


def gru_reset_after_step(p: dict, s: HState, x_t: jax.Array):
    """``n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))``: the reset gate scales the product's result."""
    R, Z = jax.nn.sigmoid(_gate(p, s, x_t, "r")), jax.nn.sigmoid(_gate(p, s, x_t, "z"))
    N = jnp.tanh(project(p["W_xn"], x_t) + p["b_n"] + R * (s[0] @ p["W_hn"] + p["b_hn"]))
    h = Z * s[0] + (1 - Z) * N
    return HState(h), h


def _reset_after_pointwise(q, xp, hh, s):
    H = s.h.shape[-1]
    R = jax.nn.sigmoid(xp[:, :H] + hh[:, :H])
    Z = jax.nn.sigmoid(xp[:, H:2 * H] + hh[:, H:2 * H])
    N = jnp.tanh(xp[:, 2 * H:] + R * (hh[:, 2 * H:] + q["b_hn"]))
    return HState(Z * s.h + (1 - Z) * N)


GRU_RESET_AFTER = Cell(
    "gru_reset_after", HState, lambda key, D, o: _init(key, D, o, "rzn", ("b_hn",)),
    lambda o: HState(o.num_hiddens), gru_reset_after_step,
    Engine(lambda p: (stack(p, "W_x", "rzn"), stack(p, "b_", "rzn")), lambda p: stack(p, "W_h", "rzn"),
           lambda p: {"b_hn": p["b_hn"]}, _reset_after_pointwise, additive=False),
    "Cho et al. 2014, reset after the product (cuDNN, PyTorch nn.GRU, flax GRUCell)")
CELLS = (GRU, GRU_RESET_AFTER)
