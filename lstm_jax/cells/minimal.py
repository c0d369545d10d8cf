"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that see the input only.

Without ``h_{t-1}`` inside the gates each step is ``h_t = a_t * h_{t-1} + b_t`` with ``a, b``
known for every step in advance, so a whole sequence is one associative scan over time
(:func:`linear_recurrence`), in log space as the paper's Appendix B.3 (``g`` keeps the states
positive, so ``log h`` exists). ``step`` is the sequential definition (generation, and the
test that the scan equals it); ``sequence`` is what training runs. The state is ``h`` only,
carried across minibatches like every other cell's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, HState, Options, normal, project, step_from


def g(x):
    """B.3's activation for the candidate: ``x + 0.5`` above 0, else ``sigmoid(x)``; positive."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x):
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def parallel_default() -> bool:
    """The associative scan on accelerators; on the CPU a plain loop over time, faster there (its
    few cores gain nothing from the scan's log T passes: docs/cells.md has the measurement)."""
    return jax.default_backend() != "cpu"


def sequential_recurrence(a_TxBxH, b_TxBxH, h0_BxH):
    """``h_t = a_t h_{t-1} + b_t`` step by step: one multiply-add per unit and step."""
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return jax.lax.scan(step, h0_BxH, (a_TxBxH, b_TxBxH))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def gated_recurrence(coefficients, coefficients_vjp, k, h0_BxH):
    """``h_t = a_t h_{t-1} + b_t`` with ``(a, b) = coefficients(*k)`` (elementwise, all steps): the
    CPU's loop, differentiated by hand. The reverse is the same loop backwards; then
    ``coefficients_vjp(*k, da, db)`` gives the gates' gradients in one elementwise pass, where
    autodiff made many passes over (T, B, H) arrays (docs/cells.md has the measurement)."""
    return sequential_recurrence(*coefficients(*k), h0_BxH)


def _gated_fwd(coefficients, coefficients_vjp, k, h0_BxH):
    a, b = coefficients(*k)
    h = sequential_recurrence(a, b, h0_BxH)
    return h, (k, a, h, h0_BxH)


def _gated_bwd(coefficients, coefficients_vjp, residuals, dh_TxBxH):
    k, a, h, h0 = residuals

    def step(carry, a_dh):  # the loop backwards: g_t = dh_t + a_{t+1} g_{t+1}; carries a_t g_t
        g = a_dh[1] + carry
        return a_dh[0] * g, g

    dh0, g = jax.lax.scan(step, jnp.zeros_like(h0), (a, dh_TxBxH), reverse=True)
    h_prev = jnp.concatenate([h0[None], h[:-1]])
    return coefficients_vjp(*k, g * h_prev, g), dh0


gated_recurrence.defvjp(_gated_fwd, _gated_bwd)


def linear_recurrence(log_a_TxBxH, log_b_TxBxH, h0_BxH):
    """``h_t = a_t h_{t-1} + b_t`` for every t at once, from ``log a`` and ``log b`` (a, b > 0):
    Heinsen's log-space sequence as ``jax.lax.associative_scan`` over time. ``h0`` enters
    linearly, so a zero initial state (every sequence's start) needs no ``log 0``."""
    out, up = h0_BxH.dtype, lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))  # logs: not in bf16

    def compose(first, then):  # two stretches of steps as one: (sum of log a, log of h from h0 = 0)
        (A1, L1), (A2, L2) = first, then
        return A1 + A2, jnp.logaddexp(L1 + A2, L2)

    A, L = jax.lax.associative_scan(compose, (up(log_a_TxBxH), up(log_b_TxBxH)), axis=0)
    return (jnp.exp(L) + jnp.exp(A) * up(h0_BxH)).astype(out)


def _init(gates: str, bias=lambda o, g: 0.0):
    """``W_x<g>`` (D, H) ~ d2l's N(0, 0.01^2) and ``b_<g>`` per gate; no recurrent weights."""
    def init(key, D: int, o: Options) -> dict:
        keys = jax.random.split(key, len(gates))
        out = {}
        for k, g_ in zip(keys, gates):
            out[f"W_x{g_}"] = normal(k, (D, o.num_hiddens))
            out[f"b_{g_}"] = jnp.full((o.num_hiddens,), bias(o, g_))
        return out
    return init


def _pre(p: dict, x, g_: str):
    """Gate ``g``'s pre-activation ``x W_x<g> + b_<g>`` for one step or all (ids or vectors)."""
    return project(p[f"W_x{g_}"], x) + p[f"b_{g_}"]


def min_gru_signals(p: dict, s: HState, x_t) -> dict:
    """``z = sigmoid(Linear_z(x))``, ``h~ = g(Linear_h(x))``, ``h = (1 - z) h + z h~``."""
    z, h_tilde = jax.nn.sigmoid(_pre(p, x_t, "z")), g(_pre(p, x_t, "h"))
    return dict(z=z, h_tilde=h_tilde, h=(1 - z) * s.h + z * h_tilde)


def _g_slope(x):
    """``g``'s derivative: 1 above 0, else the sigmoid's."""
    return jnp.where(x >= 0, 1.0, jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x)))


def _min_gru_coefficients(k_z, k_h):
    z = jax.nn.sigmoid(k_z)
    return 1 - z, z * g(k_h)


def _min_gru_vjp(k_z, k_h, da, db):
    z = jax.nn.sigmoid(k_z)
    return z * (1 - z) * (g(k_h) * db - da), db * z * _g_slope(k_h)


def _min_lstm_coefficients(k_f, k_i, k_h):
    f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
    return f / (f + i), i / (f + i) * g(k_h)


def _min_lstm_vjp(k_f, k_i, k_h, da, db):
    """a = f / (f + i), b = i / (f + i) g(k_h): both normalized gates move with f i / (f + i)^2."""
    f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
    r = f + i
    q = (da - g(k_h) * db) * f * i / (r * r)
    return q * (1 - f), -q * (1 - i), db * (i / r) * _g_slope(k_h)


def min_gru_sequence(p: dict, s: HState, x_T, parallel: bool | None = None):
    k_z, k_h = _pre(p, x_T, "z"), _pre(p, x_T, "h")
    if parallel_default() if parallel is None else parallel:
        h = linear_recurrence(-jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h), s.h)
    else:
        h = gated_recurrence(_min_gru_coefficients, _min_gru_vjp, (k_z, k_h), s.h)
    return HState(h[-1]), h


def min_lstm_signals(p: dict, s: HState, x_t) -> dict:
    """``f, i = sigmoid(Linear(x))``, normalized to sum 1: ``h = f' h + i' g(Linear_h(x))``."""
    f, i, h_tilde = jax.nn.sigmoid(_pre(p, x_t, "f")), jax.nn.sigmoid(_pre(p, x_t, "i")), g(_pre(p, x_t, "h"))
    return dict(f=f, i=i, h_tilde=h_tilde, h=f / (f + i) * s.h + i / (f + i) * h_tilde)


def min_lstm_sequence(p: dict, s: HState, x_T, parallel: bool | None = None):
    k_f, k_i, k_h = _pre(p, x_T, "f"), _pre(p, x_T, "i"), _pre(p, x_T, "h")
    if parallel_default() if parallel is None else parallel:
        log_i_over_f = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        log_f, log_i = -jax.nn.softplus(log_i_over_f), -jax.nn.softplus(-log_i_over_f)  # f' = f / (f + i)
        h = linear_recurrence(log_f, log_i + log_g(k_h), s.h)
    else:
        h = gated_recurrence(_min_lstm_coefficients, _min_lstm_vjp, (k_f, k_i, k_h), s.h)
    return HState(h[-1]), h


_sizes = lambda o: HState(o.num_hiddens)
MIN_GRU = Cell("min_gru", HState, _init("zh"), _sizes, step_from(min_gru_signals, HState), sequence=min_gru_sequence,
               signals=min_gru_signals, gate_signals=("z",))
MIN_LSTM = Cell("min_lstm", HState, _init("fih", lambda o, g_: o.forget_bias if g_ == "f" else 0.0), _sizes,
                step_from(min_lstm_signals, HState), sequence=min_lstm_sequence, signals=min_lstm_signals,
                gate_signals=("f", "i"))
CELLS = (MIN_GRU, MIN_LSTM)
