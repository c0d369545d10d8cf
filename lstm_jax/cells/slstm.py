"""xLSTM's sLSTM (Beck et al. 2024): exponential gating with a normalizer and a stabilizer state.

Gates in xLSTM's order: input ``i``, forget ``f``, cell input ``z``, output ``o``; per gate
``W_x<g>`` (D, H), ``W_h<g>`` (K, H/K, H/K) one block per head (the recurrence is
block-diagonal: each head's units see only their own head's ``h``), ``b_<g>`` (H,). The step is
the ``xlstm`` package's pure-PyTorch reference (``blocks/slstm/src/vanilla``, pointwise
``"slstm"``), which the tests compare with: ``m`` keeps ``exp`` from overflowing, ``n``
normalizes, ``h = o * c / n``, and a state whose ``n`` is 0 (every sequence's start) takes
``m = i~``. Through the engine the heads' blocks are one block-diagonal (H, 4H) matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import block_diag

from lstm_jax.cells import Cell, Engine, Options, normal, project, stack, step_from

GATES = "ifzo"


class SLSTMState(NamedTuple):
    """``h`` (what the next layer sees), the cell ``c``, the normalizer ``n``, the stabilizer ``m``."""

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array


def init(key, D: int, o: Options) -> dict:
    """d2l's N(0, 0.01^2) weights; zero biases but the forget gate's ``forget_bias``."""
    H, K = o.num_hiddens, o.num_heads
    keys = iter(jax.random.split(key, 2 * len(GATES)))
    out = {}
    for g in GATES:
        out[f"W_x{g}"] = normal(next(keys), (D, H))
        out[f"W_h{g}"] = normal(next(keys), (K, H // K, H // K))
        out[f"b_{g}"] = jnp.full((H,), o.forget_bias if g == "f" else 0.0)
    return out


def pointwise(i_raw, f_raw, z_raw, o_raw, s: SLSTMState) -> dict:
    """One step's elementwise part, as the reference writes it (its ``min(.., 1)`` included)."""
    log_f_plus_m = s.m + jax.nn.log_sigmoid(f_raw)
    m = jnp.where(s.n == 0, i_raw, jnp.maximum(i_raw, log_f_plus_m))
    i = jnp.minimum(jnp.exp(i_raw - m), 1.0)
    f = jnp.minimum(jnp.exp(log_f_plus_m - m), 1.0)
    c = f * s.c + i * jnp.tanh(z_raw)
    n = f * s.n + i
    o = jax.nn.sigmoid(o_raw)
    return dict(i=i, f=f, z=jnp.tanh(z_raw), o=o, c=c, n=n, m=m, h=o * c / n)


def linearize(z, s: SLSTMState):
    """The engine's step on ``z = xp + h W_h`` (gates side by side), and the factors its reverse
    step (:func:`transpose`) multiplies by: the derivative as autodiff of :func:`pointwise` takes
    it, ``min`` and ``max`` giving half the gradient to each side at a tie."""
    i_raw, f_raw, z_raw, o_raw = jnp.split(z, 4, axis=-1)
    v = pointwise(i_raw, f_raw, z_raw, o_raw, s)
    log_f_plus_m = s.m + jax.nn.log_sigmoid(f_raw)
    e_i, e_f = jnp.exp(i_raw - v["m"]), jnp.exp(log_f_plus_m - v["m"])
    min_slope = lambda e: jnp.where(e < 1, 1.0, jnp.where(e == 1, 0.5, 0.0))  # of min(e, 1)
    G_i, G_f = min_slope(e_i) * e_i, min_slope(e_f) * e_f
    to_i = jnp.where((s.n == 0) | (i_raw > log_f_plus_m), 1.0, jnp.where(i_raw == log_f_plus_m, 0.5, 0.0))
    o, c_n = v["o"], v["c"] / v["n"]
    factors = (o / v["n"], o / v["n"] * c_n, c_n * o * (1 - o), v["i"] * (1 - jnp.square(v["z"])),
               G_i, G_i * v["z"], G_f * s.c, G_f * s.n, to_i, jax.nn.sigmoid(-f_raw), v["f"])
    return _state(v), jnp.concatenate(factors, axis=-1)  # one (B, 11H) array: one store per step


def transpose(factors, ds: SLSTMState):
    """One reverse step: the gates' gradients (i, f, z, o side by side) and those of the previous
    ``c, n, m``; the previous ``h`` gets its gradient through the recurrent product only."""
    A, AC, K_o, K_z, G_i, G_iz, G_fc, G_fn, to_i, sig_neg_f, f = jnp.split(factors, 11, axis=-1)
    dh, dc, dn, dm = ds
    dc = dc + A * dh  # h = o c / n
    dn = dn - AC * dh
    d_i = G_iz * dc + G_i * dn  # through i = min(exp(i~ - m), 1), into c and n
    d_f = G_fc * dc + G_fn * dn  # through f = min(exp(m_prev + log sig(f~) - m), 1)
    dm = dm - d_i - d_f  # m = max(i~, m_prev + log sig(f~)) (i~ at a zero n)
    d_lf = d_f + (1 - to_i) * dm
    dz = jnp.concatenate([d_i + to_i * dm, sig_neg_f * d_lf, K_z * dc, K_o * dh], axis=-1)
    return dz, (f * dc, f * dn, d_lf)


def slstm_signals(p: dict, s: SLSTMState, x_t) -> dict:
    B, (K, Dh, _) = s.h.shape[0], p["W_hi"].shape
    heads = s.h.reshape(B, K, Dh)
    pre = lambda g: (project(p[f"W_x{g}"], x_t) + p[f"b_{g}"]
                     + jnp.einsum("bkd,kde->bke", heads, p[f"W_h{g}"]).reshape(B, K * Dh))
    return pointwise(*map(pre, GATES), s)


def _state(signals: dict) -> SLSTMState:
    return SLSTMState(*(signals[f] for f in SLSTMState._fields))


def recurrent_matrix(p: dict) -> jax.Array:
    """The heads' blocks as one block-diagonal (H, 4H) matrix, gates side by side."""
    return jnp.concatenate([block_diag(*p[f"W_h{g}"]) for g in GATES], axis=-1)


SLSTM = Cell(
    "slstm", SLSTMState, init, lambda o: SLSTMState(*(o.num_hiddens,) * 4), step_from(slstm_signals, SLSTMState),
    Engine(lambda p: (stack(p, "W_x", GATES), stack(p, "b_", GATES)), recurrent_matrix, lambda p: {},
           lambda q, xp, hh, s: _state(pointwise(*jnp.split(xp + hh, 4, axis=-1), s)),
           linearize=linearize, transpose=transpose),
    GATES, signals=slstm_signals, gate_signals=("i", "f", "o"))
CELLS = (SLSTM,)
