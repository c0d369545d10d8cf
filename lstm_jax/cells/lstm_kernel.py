"""The LSTM's own kernel for the recurrence engine: its reverse step written by hand.

The same function as :func:`lstm_jax.engine.cell_recurrence` on the LSTM's elementwise function
(tested), and faster: the forward loop forms what each reverse step multiplies by while the
step's gates are in cache, all four gates come from one ``tanh`` (``sigmoid(x) = 1/2 + 1/2
tanh(x/2)``), both loops write their big per-step results in place, several time steps run per
loop iteration, and the output layer can sit inside the custom VJP so that its weight gradient
joins the recurrent one's product (docs/fast_path.md has the design and the measurements).
Per lane, as the engine: tuples of arrays, each a slice of the batch rows. Gates I, F, O, C~.
The peephole LSTM runs here too: its peepholes change only what the forward step forms for the
reverse one (``R`` and ``F``), so the reverse loop is the LSTM's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _forward(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH, save: bool, peep=None):
    """The LSTM for each lane: hidden states, final states and (if ``save``) residuals.

    With ``save``, each step also forms what its backward step multiplies by (``M``, ``R``,
    ``F``) while its gates are in cache (as passes after the loop they were memory-bound);
    ``M`` overwrites the lane's input projections in the same buffer; and each step's h is
    stored transposed, the weight gradient's left operand (docs/fast_path.md). With peepholes
    (``peep = (w_ci, w_cf, w_co)``) each step's c is saved too, for their gradients.
    """
    H = W_Hx4H.shape[0]
    s = jnp.concatenate([jnp.full((3 * H,), 0.5, W_Hx4H.dtype), jnp.ones((H,), W_Hx4H.dtype)])  # sigmoid via tanh
    T = xp_TxBx4H[0].shape[0]
    U = time_unroll(T)

    def lane_step(h, c, xp_Bx4H):
        """One step, and what its backward step multiplies by: ``M (B, 4H)``, with
        d(pre-activation) = [dc, dc, dh, dc] * M for the gates I, F, O, C~;
        ``R = dh/dc``; ``F`` (dc_prev = dc * F). Without ``save`` XLA drops them.

        Peepholes (i, f see c_{t-1}, o sees c_t) keep that form: o's adds ``M_O w_co`` to
        ``R``, i's and f's add ``M_I w_ci + M_F w_cf`` to ``F``; the reverse step is the LSTM's."""
        z = h @ W_Hx4H + xp_Bx4H
        if peep is None:
            a = jnp.tanh(z * s)  # one tanh for all four gates
            I, F, O, C_tilde = jnp.split(a * s + (1 - s), 4, axis=-1)
            c_new = F * c + I * C_tilde
        else:
            w_ci, w_cf, w_co = peep
            zI, zF, zO, zC = jnp.split(z, 4, axis=-1)
            aI, aF, aC = jnp.tanh(0.5 * (zI + w_ci * c)), jnp.tanh(0.5 * (zF + w_cf * c)), jnp.tanh(zC)
            I, F, C_tilde = 0.5 * aI + 0.5, 0.5 * aF + 0.5, aC
            c_new = F * c + I * C_tilde
            aO = jnp.tanh(0.5 * (zO + w_co * c_new))
            O = 0.5 * aO + 0.5
            a = jnp.concatenate([aI, aF, aO, aC], axis=-1)
        tc = jnp.tanh(c_new)
        # d(gate)/d(pre-activation) = s^2 (1 - a^2): sigmoid via tanh, and tanh.
        M = s * s * (1 - a * a) * jnp.concatenate([C_tilde, c, tc, I], axis=-1)
        R, dF = O * (1 - tc * tc), F
        if peep is not None:
            MI, MF, MO, _ = jnp.split(M, 4, axis=-1)
            R, dF = R + MO * w_co, F + MI * w_ci + MF * w_cf
        return O * tc, c_new, M, R, dF

    if not save:
        def step(carry, xp_t):
            new = [lane_step(h, c, x)[:2] for (h, c), x in zip(carry, xp_t)]
            return tuple(new), tuple(h for h, _ in new)

        final, h_TxBxH = jax.lax.scan(step, tuple(zip(h_BxH, c_BxH)), xp_TxBx4H, unroll=U)
        return h_TxBxH, tuple(f[0] for f in final), tuple(f[1] for f in final), None

    transposed = _stores_transposed_h(h_BxH[0].shape[0])

    def block(lanes, i):  # U time steps; per lane: h, c and the xp / M buffer
        new, outs = [], []
        for h, c, buf in lanes:
            xp_UxBx4H = jax.lax.dynamic_index_in_dim(buf, i, keepdims=False)
            steps = []  # (h, M, R, F, c) per time step
            for k in range(U):
                h, c, *factors = lane_step(h, c, xp_UxBx4H[k])
                steps.append((h, *factors, c))
            hs, Ms, Rs, Fs, cs = zip(*steps)
            new.append((h, c, jax.lax.dynamic_update_index_in_dim(buf, jnp.stack(Ms), i, 0)))
            outs.append((jnp.stack(hs), jnp.stack(Rs), jnp.stack(Fs),
                         jnp.stack([h.T for h in hs]) if transposed else None, jnp.stack(cs) if peep is not None else None))
        return tuple(new), tuple(outs)

    init = tuple((h, c, _blocks(xp, U)) for h, c, xp in zip(h_BxH, c_BxH, xp_TxBx4H))
    final, outs = jax.lax.scan(block, init, jnp.arange(T // U))
    h_TxBxH = tuple(_unblock(o[0]) for o in outs)
    # M (T, B, 4H); R, F (T, B, H); h^T; c (T, B, H) with peepholes
    saved = tuple((_unblock(M), _unblock(R), _unblock(F), _unblock(hT), _unblock(C))
                  for (_, R, F, hT, C), (_, _, M) in zip(outs, final))
    return h_TxBxH, tuple(f[0] for f in final), tuple(f[1] for f in final), saved


def _blocks(a_TxN, U: int):
    """(T, ...) -> (T/U, U, ...): one loop iteration's time steps per row."""
    return a_TxN.reshape(-1, U, *a_TxN.shape[1:])


def _unblock(a):
    return None if a is None else a.reshape(-1, *a.shape[2:])


PEEPHOLES = ("w_ci", "w_cf", "w_co")  # lstm_peephole's elementwise parameters, each (H,)


def recurrence(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH, q=None):
    """LSTM over time given the input projections ``xp`` (x_t W_x + b, per step), per lane (tuples
    of arrays, each a slice of the batch rows): ``(h_TxBxH, h_last, c_last)``, per lane. ``q``: the
    cell's elementwise parameters, ``{}`` (the LSTM) or the peepholes (:data:`PEEPHOLES`)."""
    return _kernel(q or {}, xp_TxBx4H, W_Hx4H, None, None, h_BxH, c_BxH)


def recurrence_and_head(xp_TxBx4H, W_Hx4H, W_HxV, b_V, h_BxH, c_BxH, q=None):
    """:func:`recurrence` and the output layer: ``(logits_TxBxV, h_last, c_last)`` per lane.
    Inside, so that the output layer's weight gradient can join the recurrent one's matrix product."""
    return _kernel(q or {}, xp_TxBx4H, W_Hx4H, W_HxV, b_V, h_BxH, c_BxH)


@jax.custom_vjp
def _kernel(q, xp_TxBx4H, W_Hx4H, W_HxV, b_V, h_BxH, c_BxH):
    """Without an output layer (``W_HxV = b_V = None``) the outputs are ``h_TxBxH``."""
    return _kernel_fwd(q, xp_TxBx4H, W_Hx4H, W_HxV, b_V, h_BxH, c_BxH, save=False)[0]


def _peep(q):
    return tuple(q[k] for k in PEEPHOLES) if q else None


def _kernel_fwd(q, xp_TxBx4H, W_Hx4H, W_HxV, b_V, h_BxH, c_BxH, save=True):
    h_TxBxH, h, c, saved = _forward(xp_TxBx4H, W_Hx4H, h_BxH, c_BxH, save=save, peep=_peep(q))
    out = h_TxBxH if W_HxV is None else tuple(h_l @ W_HxV + b_V for h_l in h_TxBxH)
    return (out, h, c), (q, W_Hx4H, W_HxV, h_BxH, c_BxH, h_TxBxH, saved)


def _kernel_bwd(residuals, cotangents):
    q, W_Hx4H, W_HxV, h0, c0, h_TxBxH, saved = residuals
    dl_TxBxV, dh_last, dc_last = cotangents
    dt = W_Hx4H.dtype
    if W_HxV is None:
        dz_TxBx4H, dh0, dc0 = _reverse(W_Hx4H, saved, dl_TxBxV, dh_last, dc_last)
        return (_peephole_gradient(q, c0, saved, dz_TxBx4H), dz_TxBx4H,
                _weight_gradient(h0, h_TxBxH, saved, dz_TxBx4H, dt), None, None, dh0, dc0)
    H, V = W_HxV.shape
    dh_TxBxH = tuple(dl @ W_HxV.T for dl in dl_TxBxV)
    db_V = sum(dl.sum((0, 1)) for dl in dl_TxBxV)
    if saved[0][3] is None:  # one product per lane, side by side, for each weight
        dz_TxBx4H, dh0, dc0 = _reverse(W_Hx4H, saved, dh_TxBxH, dh_last, dc_last)
        dW_Hx4H = _weight_gradient(h0, h_TxBxH, saved, dz_TxBx4H, dt)
        dW_HxV = sum(jnp.dot(h_l.reshape(-1, H).T, dl.reshape(-1, V), preferred_element_type=dt)
                     for h_l, dl in zip(h_TxBxH, dl_TxBxV))
        return _peephole_gradient(q, c0, saved, dz_TxBx4H), dz_TxBx4H, dW_Hx4H, dW_HxV, db_V, dh0, dc0
    # Beside M, each step's dlogits moved one step later, where h_{t-1} meets them,
    # zero-padded to 16 columns: they come out of the reverse loop beside the gate
    # gradients, and ONE product gives both weight gradients.
    V_pad = -(-V // 16) * 16
    extra = tuple(jnp.pad(jnp.concatenate([jnp.zeros_like(dl[:1]), dl[:-1]]),
                          ((0, 0), (0, 0), (0, V_pad - V))) for dl in dl_TxBxV)
    dz_TxBxN, dh0, dc0 = _reverse(W_Hx4H, saved, dh_TxBxH, dh_last, dc_last, extra)
    dW = _weight_gradient(h0, h_TxBxH, saved, dz_TxBxN, dt)
    G = 4 * H
    dW_HxV = dW[:, G:G + V] + sum(h[-1].T @ dl[-1] for h, dl in zip(h_TxBxH, dl_TxBxV))
    dz_TxBx4H = tuple(d[..., :G] for d in dz_TxBxN)
    return (_peephole_gradient(q, c0, saved, dz_TxBx4H), dz_TxBx4H, dW[:, :G], dW_HxV, db_V, dh0, dc0)


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def _peephole_gradient(q, c0, saved, dz_TxBx4H):
    """d w_ci = sum of dz_I c_{t-1}, d w_cf of dz_F c_{t-1}, d w_co of dz_O c_t; ``{}`` without peepholes."""
    if not q:
        return {}
    grads = []
    for c0_l, (*_, c_l), dz_l in zip(c0, saved, dz_TxBx4H):
        c_prev = jnp.concatenate([c0_l[None], c_l[:-1]])
        dI, dF, dO, _ = jnp.split(dz_l, 4, axis=-1)
        grads.append(((dI * c_prev).sum((0, 1)), (dF * c_prev).sum((0, 1)), (dO * c_l).sum((0, 1))))
    return {k: sum(g[n] for g in grads).astype(q[k].dtype) for n, k in enumerate(PEEPHOLES)}


def _reverse(W_Hx4H, saved, dh_TxBxH, dh_last, dc_last, extra=None):
    """The reverse loop: each step's gate gradients dz (T, B, 4H), per lane, and dh0, dc0.

    ``extra`` (T, B, N) per lane rides along in the buffer the gate gradients
    overwrite, so it comes out beside dz, as (T, B, 4H + N).
    """
    H = W_Hx4H.shape[0]
    T = dh_TxBxH[0].shape[0]
    U = time_unroll(T)
    # Transposed once, outside the loop: each step then multiplies by a
    # row-major (4H, H) operand instead of a transposed view of W.
    W_4HxH = jnp.transpose(W_Hx4H)

    def lane_step(dh, dc, dh_out, M, R, F):
        dh = dh + dh_out
        dc = dc + dh * R
        dz_Bx4H = jnp.concatenate([dc, dc, dh, dc], axis=-1) * M  # gates I, F, O, C~
        return dz_Bx4H @ W_4HxH, dc * F, dz_Bx4H

    def block(lanes, xs):  # U time steps, last first; per lane: dh, dc and the M / dz buffer
        i, per_lane = xs
        new = []
        for (dh, dc, buf), (dh_out, R, F) in zip(lanes, per_lane):
            M_UxBx4H = jax.lax.dynamic_index_in_dim(buf, i, keepdims=False)[..., :4 * H]
            dz = [None] * U
            for k in reversed(range(U)):
                dh, dc, dz[k] = lane_step(dh, dc, dh_out[k], M_UxBx4H[k], R[k], F[k])
            new.append((dh, dc, jax.lax.dynamic_update_slice(buf, jnp.stack(dz)[None], (i, 0, 0, 0))))
        return tuple(new), None

    init, xs = [], []
    for l, (dho, dhl, dcl, (M, R, F, *_)) in enumerate(zip(dh_TxBxH, dh_last, dc_last, saved)):
        if extra is not None:
            M = jnp.concatenate([M, extra[l]], axis=-1)
        init.append((dhl, dcl, _blocks(M, U)))  # the gate gradients overwrite M
        xs.append((_blocks(dho, U), _blocks(R, U), _blocks(F, U)))
    final, _ = jax.lax.scan(block, tuple(init), (jnp.arange(T // U), tuple(xs)), reverse=True)
    return (tuple(_unblock(dz) for _, _, dz in final),
            tuple(f[0] for f in final), tuple(f[1] for f in final))


def _weight_gradient(h0, h_TxBxH, saved, dz_TxBxN, dt):
    """sum over lanes and steps of h_{t-1}^T dz_t, (H, N).

    With h stored transposed by the forward loop it is ONE row-major
    (H, lanes*T*B_l) x (lanes*T*B_l, N) product (rows ordered lane, step, row);
    else one product per lane contracting h's first axis.
    """
    H = h0[0].shape[-1]
    if saved[0][3] is not None:
        hT_prev = jnp.concatenate([
            jnp.concatenate([h0_l.T[:, None, :], jnp.transpose(hT_l[:-1], (1, 0, 2))], axis=1).reshape(H, -1)
            for h0_l, (_, _, _, hT_l, _) in zip(h0, saved)], axis=1)
        return jnp.dot(hT_prev, jnp.concatenate([d.reshape(-1, d.shape[-1]) for d in dz_TxBxN]),
                       preferred_element_type=dt)
    return sum(jnp.dot(jnp.concatenate([h0_l[None], h_l[:-1]]).reshape(-1, H).T,
                       dz_l.reshape(-1, dz_l.shape[-1]), preferred_element_type=dt)
               for h0_l, h_l, dz_l in zip(h0, h_TxBxH, dz_TxBxN))


def _stores_transposed_h(lane_rows: int) -> bool:
    """Whether the LSTM's forward loop also stores h transposed, for the weight gradient: it pays
    for few rows per lane, where the per-step transposes are cheap (docs/performance.md)."""
    return lane_rows <= 16


def time_unroll(num_steps: int) -> int:
    """The LSTM kernel's time steps per loop iteration: the largest divisor of ``num_steps`` up
    to 5 (within one iteration a lane may start its next step while the other finishes)."""
    return max(u for u in range(1, 6) if num_steps % u == 0)
