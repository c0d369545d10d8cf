"""The LSTM family: d2l's LSTM and the variants Greff et al. 2015 compared, as pure functions.

Gates in d2l's order: input I, forget F, output O, candidate C~; per gate ``W_x<g>``
(D, H), ``W_h<g>`` (H, H), ``b_<g>`` (H,). Shapes are in the names: B batch, H hidden
units, D inputs, P projection.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax.cells import (Cell, Engine, Options, gate, gate_params, lstm_kernel, normal, project, stack,
                            step_from)

# d2l's 14 arrays of a one-layer model, in d2l's order: input, forget, output gate, candidate, head.
PARAM_NAMES = ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
               "W_xc", "W_hc", "b_c", "W_hq", "b_q")
LAYER_NAMES = PARAM_NAMES[:12]  # one layer's gates
GATES = "ifoc"


class LSTMState(NamedTuple):
    """The recurrent state, d2l's ``(H, C)``; in a stacked model each is (B, L, H)."""

    h: jax.Array
    c: jax.Array


def _gates(key, D: int, o: Options, gates: str = GATES, recurrent: int | None = None) -> dict:
    """d2l's ``get_lstm_params`` for ``gates``: zero biases except the forget gate's
    (``forget_bias``; Jozefowicz et al. 2015 recommend 1)."""
    return gate_params(key, D, o.num_hiddens, gates, recurrent, lambda g: o.forget_bias if g == "f" else 0.0)


def _sizes(o: Options) -> LSTMState:
    return LSTMState(o.num_hiddens, o.num_hiddens)


def lstm_signals(params: dict, carry: tuple, x_t: jax.Array) -> dict:
    """d2l's ``lstm``, one time step of one layer, every quantity named: ``carry = (h, c)``, each (B, H)."""
    p, (h, c) = params, carry
    I, F, O = (jax.nn.sigmoid(gate(p, h, x_t, g)) for g in "ifo")
    C_tilde = jnp.tanh(gate(p, h, x_t, "c"))
    c = F * c + I * C_tilde
    h = O * jnp.tanh(c)
    return dict(i=I, f=F, o=O, c_tilde=C_tilde, c=c, h=h)


lstm_step = step_from(lstm_signals, LSTMState)  # (params, (h, c), x_t) -> (LSTMState(h, c), h)
GATE_SIGNALS = ("i", "f", "o")  # in (0, 1): what saturation is measured on


def _lstm_pointwise(q, xp, hh, s):
    I, F, O, C = jnp.split(xp + hh, 4, axis=-1)
    c = jax.nn.sigmoid(F) * s.c + jax.nn.sigmoid(I) * jnp.tanh(C)
    return LSTMState(jax.nn.sigmoid(O) * jnp.tanh(c), c)


def _engine(gates=GATES, pointwise=_lstm_pointwise, q=lambda p: {}, bias=True, kernel=None, W=lambda W: W, **kw):
    """``W``: what the engine multiplies by, from a stacked weight (both ``W_x`` and ``W_h``)."""
    return Engine(lambda p: (W(stack(p, "W_x", gates)), stack(p, "b_", gates) if bias else None),
                  lambda p: W(stack(p, "W_h", gates)), q, pointwise, kernel, **kw)


# d2l 10.1 (Hochreiter & Schmidhuber 1997, with Gers et al.'s forget gate)
LSTM = Cell("lstm", LSTMState, _gates, _sizes, lstm_step, _engine(kernel=lstm_kernel), GATES,
            signals=lstm_signals, gate_signals=GATE_SIGNALS)


# flax's OptimizedLSTMCell holds the same weights: its gates (i, f, g, o) are d2l's (i, f, c, o);
# its input kernels have no bias, its recurrent ones carry the gate's.
_FLAX_GATE = {"i": "i", "f": "f", "o": "o", "c": "g"}


def to_flax(p: dict) -> dict:
    return {k: v for g, fg in _FLAX_GATE.items() for k, v in (
        (f"i{fg}", {"kernel": p[f"W_x{g}"]}), (f"h{fg}", {"kernel": p[f"W_h{g}"], "bias": p[f"b_{g}"]}))}


def from_flax(cell: dict) -> dict:
    out = {}
    for g, fg in _FLAX_GATE.items():
        out.update({f"W_x{g}": cell[f"i{fg}"]["kernel"], f"W_h{g}": cell[f"h{fg}"]["kernel"],
                    f"b_{g}": cell[f"h{fg}"]["bias"]})
    return {n: out[n] for n in LAYER_NAMES}


# --- peepholes (Gers & Schmidhuber 2000; Greff's "vanilla"): i, f see c_{t-1}, o sees c_t

def _peephole_init(key, D, o):
    k = jax.random.split(jax.random.fold_in(key, 1), 3)
    return {**_gates(key, D, o),
            **{f"w_c{g}": normal(k[n], (o.num_hiddens,)) for n, g in enumerate("ifo")}}


def _peephole_pointwise(q, xp, hh, s):
    zi, zf, zo, zc = jnp.split(xp + hh, 4, axis=-1)
    c = jax.nn.sigmoid(zf + q["w_cf"] * s.c) * s.c + jax.nn.sigmoid(zi + q["w_ci"] * s.c) * jnp.tanh(zc)
    return LSTMState(jax.nn.sigmoid(zo + q["w_co"] * c) * jnp.tanh(c), c)


def _peephole_signals(p, s, x_t):
    z = {g: gate(p, s[0], x_t, g) for g in GATES}
    I = jax.nn.sigmoid(z["i"] + p["w_ci"] * s[1])
    F = jax.nn.sigmoid(z["f"] + p["w_cf"] * s[1])
    C_tilde = jnp.tanh(z["c"])
    c = F * s[1] + I * C_tilde
    O = jax.nn.sigmoid(z["o"] + p["w_co"] * c)
    h = O * jnp.tanh(c)
    return dict(i=I, f=F, o=O, c_tilde=C_tilde, c=c, h=h)


PEEPHOLE = Cell("lstm_peephole", LSTMState, _peephole_init, _sizes, step_from(_peephole_signals, LSTMState),
                _engine(pointwise=_peephole_pointwise, q=lambda p: {k: p[k] for k in lstm_kernel.PEEPHOLES},
                        kernel=lstm_kernel), GATES,
                signals=_peephole_signals, gate_signals=GATE_SIGNALS)


# --- coupled input and forget gate (Greff's CIFG): F = 1 - I, no forget-gate parameters

def _cifg_signals(p, s, x_t):
    I, O = (jax.nn.sigmoid(gate(p, s[0], x_t, g)) for g in "io")
    C_tilde = jnp.tanh(gate(p, s[0], x_t, "c"))
    c = (1 - I) * s[1] + I * C_tilde
    h = O * jnp.tanh(c)
    return dict(i=I, f=1 - I, o=O, c_tilde=C_tilde, c=c, h=h)


def _cifg_pointwise(q, xp, hh, s):
    I, O, C = jnp.split(xp + hh, 3, axis=-1)
    I = jax.nn.sigmoid(I)
    c = (1 - I) * s.c + I * jnp.tanh(C)
    return LSTMState(jax.nn.sigmoid(O) * jnp.tanh(c), c)


CIFG = Cell("lstm_cifg", LSTMState, lambda key, D, o: _gates(key, D, o, "ioc"), _sizes,
            step_from(_cifg_signals, LSTMState), _engine("ioc", _cifg_pointwise), "ioc",
            signals=_cifg_signals, gate_signals=GATE_SIGNALS)


# --- layer normalization (Ba et al. 2016), placed as PyTorch's benchmarks/fastrnns/custom_lstms.py
# LayerNormLSTMCell: LN(x W_x) + LN(h W_h) over all four gates' columns (LN's bias is the gate
# bias), and the new cell state is LN(f c + i c~) (the normalized c is carried).

LN_EPS = 1e-5


def layer_norm(z, gain, bias):
    mean = z.mean(-1, keepdims=True)
    var = jnp.square(z - mean).mean(-1, keepdims=True)
    return (z - mean) * jax.lax.rsqrt(var + LN_EPS) * gain + bias


def centered(W_DxG):
    """``W`` less each row's mean over its columns: ``x centered(W) = x W - mean(x W)`` row by
    row, so a product comes out with the mean its layer norm would subtract already gone."""
    return W_DxG - W_DxG.mean(-1, keepdims=True)


def layer_norm_centered(z, gain, bias):
    """:func:`layer_norm` of a ``z`` whose rows have mean 0 (a product with :func:`centered`
    weights): one row reduction forward and one in its gradient, where the plain norm has two
    each; the mean's part of the gradient is the centering's, once per call outside the loop."""
    return z * jax.lax.rsqrt(jnp.square(z).mean(-1, keepdims=True) + LN_EPS) * gain + bias


@jax.custom_vjp
def layer_norm_centered_by_hand(z, gain, bias):
    """:func:`layer_norm_centered` with its gradient written out: for the input's normalization
    of all steps at once, where autodiff's form took several passes more."""
    return layer_norm_centered(z, gain, bias)


def _layer_norm_fwd(z, gain, bias):
    r = jax.lax.rsqrt(jnp.square(z).mean(-1, keepdims=True) + LN_EPS)
    x_hat = z * r
    return x_hat * gain + bias, (x_hat, r, gain)


def _layer_norm_bwd(residuals, dy):
    x_hat, r, gain = residuals
    dx_hat = dy * gain
    dz = r * (dx_hat - x_hat * (dx_hat * x_hat).mean(-1, keepdims=True))
    rows = tuple(range(dy.ndim - 1))
    return dz, (dy * x_hat).sum(rows), dy.sum(rows)


layer_norm_centered_by_hand.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def _layernorm_init(key, D, o):
    H = o.num_hiddens
    p = gate_params(key, D, H, GATES, bias=None)
    bias = jnp.zeros((4 * H,)).at[H:2 * H].set(o.forget_bias)
    return {**p, "ln_x_gain": jnp.ones((4 * H,)), "ln_x_bias": bias, "ln_h_gain": jnp.ones((4 * H,)),
            "ln_h_bias": jnp.zeros((4 * H,)), "ln_c_gain": jnp.ones((H,)), "ln_c_bias": jnp.zeros((H,))}


def _layernorm_signals(p, s, x_t):
    h, c = s
    z = (layer_norm(project(stack(p, "W_x", GATES), x_t), p["ln_x_gain"], p["ln_x_bias"])
         + layer_norm(h @ stack(p, "W_h", GATES), p["ln_h_gain"], p["ln_h_bias"]))
    I, F, O, C = jnp.split(z, 4, axis=-1)
    I, F, O, C_tilde = jax.nn.sigmoid(I), jax.nn.sigmoid(F), jax.nn.sigmoid(O), jnp.tanh(C)
    c = layer_norm(F * c + I * C_tilde, p["ln_c_gain"], p["ln_c_bias"])
    h = O * jnp.tanh(c)
    return dict(i=I, f=F, o=O, c_tilde=C_tilde, c=c, h=h)


def _layernorm_pointwise(q, xp, hh, s):
    """The step after its input's normalization (the engine does that for all steps at once); the
    engine's products are with :func:`centered` weights."""
    I, F, O, C = jnp.split(xp + layer_norm_centered(hh, q["ln_h_gain"], q["ln_h_bias"]), 4, axis=-1)
    c = layer_norm(jax.nn.sigmoid(F) * s.c + jax.nn.sigmoid(I) * jnp.tanh(C), q["ln_c_gain"], q["ln_c_bias"])
    return LSTMState(jax.nn.sigmoid(O) * jnp.tanh(c), c)


LAYERNORM = Cell("lstm_layernorm", LSTMState, _layernorm_init, _sizes, step_from(_layernorm_signals, LSTMState),
                 _engine(pointwise=_layernorm_pointwise, bias=False, additive=False, W=centered,
                         q=lambda p: {k: p[k] for k in ("ln_h_gain", "ln_h_bias", "ln_c_gain", "ln_c_bias")},
                         prepare=lambda p, xp: layer_norm_centered_by_hand(xp, p["ln_x_gain"], p["ln_x_bias"])), GATES,
                 signals=_layernorm_signals, gate_signals=GATE_SIGNALS)


# --- LSTMP (Sak et al. 2014): h_t = (o * tanh(c_t)) W_hr, (B, P); the recurrence and the next
# layer see the projected h. A second product inside the step: not an engine cell.

def _proj(o: Options) -> int:
    return o.proj_size or o.num_hiddens // 2  # 0: half the hidden size


def _proj_init(key, D, o):
    P = _proj(o)
    return {**_gates(key, D, o, recurrent=P),
            "W_hr": normal(jax.random.fold_in(key, 2), (o.num_hiddens, P))}


def _proj_signals(p, s, x_t):
    I, F, O = (jax.nn.sigmoid(gate(p, s[0], x_t, g)) for g in "ifo")
    C_tilde = jnp.tanh(gate(p, s[0], x_t, "c"))
    c = F * s[1] + I * C_tilde
    m = O * jnp.tanh(c)  # Sak et al.'s m_t, (B, H)
    return dict(i=I, f=F, o=O, c_tilde=C_tilde, c=c, m=m, h=m @ p["W_hr"])


PROJ = Cell("lstm_proj", LSTMState, _proj_init, lambda o: LSTMState(_proj(o), o.num_hiddens),
            step_from(_proj_signals, LSTMState), gates=GATES, signals=_proj_signals, gate_signals=GATE_SIGNALS)

CELLS = (LSTM, PEEPHOLE, CIFG, LAYERNORM, PROJ)
