"""The scratch LSTM's fast path: the same math as :mod:`lstm_jax.lstm`, with a
hand-written backward pass (``jax.custom_vjp``).

Why a hand-written backward pass: reverse-mode autodiff of ``lax.scan`` makes
every reverse time step accumulate the recurrent weight gradient with a small
(K = batch) matrix product plus a full-size add, and multiply by the recurrent
weights through a transposed operand. On XLA:CPU that doubles the cost of the
backward pass. Here the reverse scan only carries ``(dh, dc)`` and emits each
step's gate gradients; the weight gradient is then ONE
``(H, T*B) x (T*B, 4H)`` product after the loop, as cuDNN and oneDNN do.

Layout: the four gates (d2l's order I, F, O, C~) are concatenated along the
last axis, ``W_x: (V, 4H)``, ``W_h: (H, 4H)``, ``b: (4H,)``. All four
activations come from one ``tanh`` over the (B, 4H) block, using
``sigmoid(x) = 1/2 + 1/2 tanh(x/2)`` (an identity, not an approximation).

Shapes are in the names: B batch, T time steps, H hidden units, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.lstm import GATES, LSTMState, Params


def _gate_scale(num_hiddens: int, dtype) -> jax.Array:
    """Per column: 1/2 for the three sigmoid gates, 1 for the tanh candidate."""
    H = num_hiddens
    return jnp.concatenate([jnp.full((3 * H,), 0.5, dtype), jnp.ones((H,), dtype)])


def _split(a_Bx4H: jax.Array, H: int):
    return a_Bx4H[:, :H], a_Bx4H[:, H:2 * H], a_Bx4H[:, 2 * H:3 * H], a_Bx4H[:, 3 * H:]


def _forward(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH):
    """The recurrence. Returns hidden states (T, B, H), the final (h, c) and residuals."""
    H = h_BxH.shape[-1]
    s = _gate_scale(H, xp_TxBx4H.dtype)

    def step(carry, xp_Bx4H):
        h, c = carry
        a = jnp.tanh((h @ W_Hx4H + xp_Bx4H) * s)  # one tanh for all four gates
        I, F, O, C_tilde = _split(a * s + (1 - s), H)
        c = F * c + I * C_tilde
        h = O * jnp.tanh(c)
        return (h, c), (h, c, a)

    (h, c), (h_TxBxH, c_TxBxH, a_TxBx4H) = jax.lax.scan(step, (h_BxH, c_BxH), xp_TxBx4H)
    return h_TxBxH, h, c, (c_TxBxH, a_TxBx4H)


@jax.custom_vjp
def recurrence(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH):
    """LSTM over time given the input projections ``xp`` (x_t W_x + b, per step).

    Returns ``(h_TxBxH, h_last, c_last)``; differentiable in all four inputs.
    """
    h_TxBxH, h, c, _ = _forward(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH)
    return h_TxBxH, h, c


def _recurrence_fwd(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH):
    h_TxBxH, h, c, (c_TxBxH, a_TxBx4H) = _forward(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH)
    residuals = (W_Hx4H, h_BxH, c_BxH, h_TxBxH, c_TxBxH, a_TxBx4H)
    return (h_TxBxH, h, c), residuals


def _recurrence_bwd(residuals, cotangents):
    W_Hx4H, h0, c0, h_TxBxH, c_TxBxH, a_TxBx4H = residuals
    dh_TxBxH, dh_last, dc_last = cotangents
    H = h0.shape[-1]
    s = _gate_scale(H, a_TxBx4H.dtype)
    s2 = s * s
    # Transposed once, outside the loop: each step then multiplies by a
    # row-major (4H, H) operand instead of a transposed view of W.
    W_4HxH = jnp.transpose(W_Hx4H)
    c_prev_TxBxH = jnp.concatenate([c0[None], c_TxBxH[:-1]])

    def step(carry, xs):
        dh, dc = carry
        dh_out, c, c_prev, a = xs
        I, F, O, C_tilde = _split(a * s + (1 - s), H)
        tc = jnp.tanh(c)
        dh = dh + dh_out
        dc = dc + dh * O * (1 - tc * tc)
        dgates = jnp.concatenate([dc * C_tilde, dc * c_prev, dh * tc, dc * I], axis=-1)
        dz_Bx4H = dgates * s2 * (1 - a * a)  # d(s*tanh(s*z) + 1-s)/dz = s^2 (1 - tanh^2)
        return (dz_Bx4H @ W_4HxH, dc * F), dz_Bx4H

    (dh0, dc0), dz_TxBx4H = jax.lax.scan(
        step, (dh_last, dc_last), (dh_TxBxH, c_TxBxH, c_prev_TxBxH, a_TxBx4H), reverse=True)
    # The recurrent weight gradient for all steps at once: sum_t h_{t-1}^T dz_t.
    h_prev_TxBxH = jnp.concatenate([h0[None], h_TxBxH[:-1]])
    T, B, _ = h_TxBxH.shape
    dW_Hx4H = jnp.dot(h_prev_TxBxH.reshape(T * B, H).T, dz_TxBx4H.reshape(T * B, 4 * H),
                      preferred_element_type=W_Hx4H.dtype)
    return dz_TxBx4H, dW_Hx4H, dh0, dc0


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _same_vma(*arrays):
    """Inside ``shard_map``: give every input the union of their varying mesh axes.

    A custom VJP must return each cotangent with its input's type. The weights
    are replicated (invariant) while their gradient, computed from this
    device's rows, varies across devices; casting them to varying *before* the
    custom VJP leaves the cross-device sum to autodiff of the cast (a psum),
    as for any other use of replicated weights. Outside shard_map: a no-op.
    """
    varying = [_varying_axes(a) for a in arrays]
    union = frozenset().union(*varying)
    return tuple(a if v == union else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
                 for a, v in zip(arrays, varying))


def _varying_axes(a) -> frozenset:
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10
    return manual.varying if manual is not None else getattr(aval, "vma", frozenset())


def stacked(params: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
    """d2l's per-gate arrays as ``W_x (V, 4H)``, ``W_h (H, 4H)``, ``b (4H,)``, gates I, F, O, C~."""
    cat = lambda prefix: jnp.concatenate([params[f"{prefix}{g}"] for g in GATES], axis=-1)
    return cat("W_x"), cat("W_h"), cat("b_")


def lstm_sequence(params: Params, state: LSTMState, tokens_BxT: jax.Array
                  ) -> tuple[jax.Array, LSTMState]:
    """Same contract as :func:`lstm_jax.lstm.lstm_sequence`, but time-major: returns (T, B, H)."""
    W_x, W_h, b = stacked(params)
    # Row lookup instead of a one-hot product (same math), bias folded in, for all steps at once.
    xp_TxBx4H = jnp.take(W_x, tokens_BxT.T, axis=0) + b
    h_TxBxH, h, c = recurrence(*_same_vma(xp_TxBx4H, W_h, state.h, state.c))
    return h_TxBxH, LSTMState(h, c)


def apply(params: Params, state: LSTMState, tokens_BxT: jax.Array
          ) -> tuple[jax.Array, LSTMState]:
    """Logits (B, T, V) and the final state, as :func:`lstm_jax.lstm.apply`."""
    h_TxBxH, state = lstm_sequence(params, state, tokens_BxT)
    logits_TxBxV = h_TxBxH @ params["W_hq"] + params["b_q"]
    return jnp.transpose(logits_TxBxV, (1, 0, 2)), state
