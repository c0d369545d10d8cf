"""The recurrence engine: a cell's loop over time with a hand-written backward pass
(``jax.custom_vjp``), the function of autodiff of the cell's ``step`` under ``lax.scan``.

For every engine cell (:class:`lstm_jax.cells.Engine`) the input projection of all steps is
one product before the loop (:func:`input_projection`); the loop does the recurrent product
and the cell's elementwise function; the reverse loop carries only the state's gradient and
takes the elementwise function's from ``jax.vjp`` (:func:`cell_recurrence`); the recurrent
weight gradient is one product after it. Batch rows are split into lanes, independent chains
that XLA:CPU runs on different cores. A cell may bring its own kernel instead, a hand-written
reverse step where a measurement says it pays (the LSTM's, with or without peepholes:
:mod:`lstm_jax.cells.lstm_kernel`, docs/fast_path.md). Gates are concatenated along
the last axis: ``W_x (D, G)``, ``W_h (H, G)``, ``b (G,)``. Reverse mode only (``jax.jvp``:
``impl="reference"``). Shapes: B batch, T time steps, H hidden units, G gate columns, V vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def cell_recurrence(pointwise, additive: bool, q, xp_TxBxG, W_HxG, state):
    """Any engine cell over time given its input projections ``xp`` (per lane, like ``state``):
    ``(h_TxBxH, final_state)`` per lane; differentiable in ``q``, ``xp``, ``W_h`` and ``state``.

    ``additive``: ``pointwise`` sees only ``xp + hh`` (the LSTM family, the RNN), so the
    forward loop saves that sum and the reverse loop's one gradient is both inputs'.
    """
    h_TxBxH, final, _ = _cell_forward(pointwise, additive, q, xp_TxBxG, W_HxG, state, save=False)
    return h_TxBxH, final


def _cell_forward(pointwise, additive, q, xp_TxBxG, W_HxG, state, save):
    """With ``save``, each step's inputs to ``pointwise`` (``xp + hh`` when additive) and state."""
    def step(lanes, xp_t):
        new, outs = [], []
        for s, x in zip(lanes, xp_t):
            hh = s[0] @ W_HxG
            n = pointwise(q, x, hh, s)
            new.append(n)
            outs.append((n[0], *((x + hh,) if additive else (x, hh)), s) if save else (n[0],))
        return tuple(new), tuple(outs)

    final, outs = jax.lax.scan(step, tuple(state), xp_TxBxG)
    return tuple(o[0] for o in outs), final, tuple(o[1:] for o in outs) if save else None


def _cell_recurrence_fwd(pointwise, additive, q, xp_TxBxG, W_HxG, state):
    h_TxBxH, final, saved = _cell_forward(pointwise, additive, q, xp_TxBxG, W_HxG, state, save=True)
    return (h_TxBxH, final), (q, W_HxG, saved)


def _cell_recurrence_bwd(pointwise, additive, residuals, cotangents):
    """The reverse loop: ``jax.vjp`` of ``pointwise`` per step (its forward recomputed from the
    saved inputs: cheaper than saving its residuals, measured), then the recurrent product's
    input gradient; the weight gradient is one product after the loop. ``q`` enters broadcast
    to the lane's rows, so its per-step gradient needs no reduction (one sum after the loop)."""
    q, W_HxG, saved = residuals
    dh_TxBxH, dfinal = cotangents
    W_GxH = jnp.transpose(W_HxG)
    f = (lambda q, z, s: pointwise(q, z, jnp.zeros_like(z), s)) if additive else pointwise
    rows = lambda tree, B: jax.tree.map(lambda a: jnp.broadcast_to(a, (B,) + a.shape), tree)

    def step(lanes, xs):  # last step first
        new, outs = [], []
        for (dq, ds), dh_out, (*inputs, s_prev) in zip(lanes, *xs):
            ds = type(ds)(ds[0] + dh_out, *ds[1:])
            dq_t, *d_in, ds_prev = jax.vjp(f, rows(q, ds[0].shape[0]), *inputs, s_prev)[1](ds)
            new.append((jax.tree.map(jnp.add, dq, dq_t), type(ds_prev)(ds_prev[0] + d_in[-1] @ W_GxH, *ds_prev[1:])))
            outs.append(tuple(d_in))
        return tuple(new), tuple(outs)

    init = tuple((jax.tree.map(jnp.zeros_like, rows(q, ds[0].shape[0])), ds) for ds in dfinal)
    final, outs = jax.lax.scan(step, init, (dh_TxBxH, saved), reverse=True)
    dW = weight_gradient([s_prev[0] for *_, s_prev in saved], [d[-1] for d in outs], W_HxG.dtype)
    dq = jax.tree.map(lambda *a: sum(x.sum(0) for x in a), *(dq for dq, _ in final))
    return dq, tuple(d[0] for d in outs), dW, tuple(ds for _, ds in final)


cell_recurrence.defvjp(_cell_recurrence_fwd, _cell_recurrence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def factored_recurrence(linearize, transpose, xp_TxBxG, W_HxG, state):
    """:func:`cell_recurrence` for an additive cell that writes its step's derivative by hand.

    ``linearize(z, s) -> (new_state, factors)``: the step on ``z = xp + h W_h`` and what its
    reverse step multiplies by, formed in the forward loop while the step's values are in cache
    (without the reverse pass XLA drops them). ``transpose(factors, ds) -> (dz, ds_rest)``: the
    step's gradient, linear in the new state's ``ds``; ``ds_rest`` holds the previous state's
    fields after ``h``, which the step reads only through the product. No elementwise parameters.
    """
    h_TxBxH, final, _ = _factored_forward(linearize, xp_TxBxG, W_HxG, state, save=False)
    return h_TxBxH, final


def _factored_forward(linearize, xp_TxBxG, W_HxG, state, save):
    def step(lanes, xp_t):
        new, outs = [], []
        for s, x in zip(lanes, xp_t):
            n, factors = linearize(x + s[0] @ W_HxG, s)
            new.append(n)
            outs.append((n[0], factors) if save else (n[0],))
        return tuple(new), tuple(outs)

    final, outs = jax.lax.scan(step, tuple(state), xp_TxBxG)
    return tuple(o[0] for o in outs), final, tuple(o[1] for o in outs) if save else None


def _factored_fwd(linearize, transpose, xp_TxBxG, W_HxG, state):
    h_TxBxH, final, saved = _factored_forward(linearize, xp_TxBxG, W_HxG, state, save=True)
    return (h_TxBxH, final), (W_HxG, tuple(s[0] for s in state), h_TxBxH, saved)


def _factored_bwd(linearize, transpose, residuals, cotangents):
    W_HxG, h0, h_TxBxH, saved = residuals
    dh_TxBxH, dfinal = cotangents
    W_GxH = jnp.transpose(W_HxG)

    def step(lanes, xs):  # last step first
        new, outs = [], []
        for ds, dh_out, factors in zip(lanes, *xs):
            dz, rest = transpose(factors, type(ds)(ds[0] + dh_out, *ds[1:]))
            new.append(type(ds)(dz @ W_GxH, *rest))
            outs.append(dz)
        return tuple(new), tuple(outs)

    final, dz_TxBxG = jax.lax.scan(step, tuple(dfinal), (dh_TxBxH, saved), reverse=True)
    h_prev = [jnp.concatenate([h0_l[None], h_l[:-1]]) for h0_l, h_l in zip(h0, h_TxBxH)]
    dW = weight_gradient(h_prev, dz_TxBxG, W_HxG.dtype)
    return dz_TxBxG, dW, final


factored_recurrence.defvjp(_factored_fwd, _factored_bwd)


def weight_gradient(x_TxBxD, d_TxBxG, dtype):
    """A product's weight gradient, sum over lanes and steps of ``x_t^T d_t``: (D, G), one product per lane."""
    return sum(jnp.dot(x.reshape(-1, x.shape[-1]).T, d.reshape(-1, d.shape[-1]), preferred_element_type=dtype)
               for x, d in zip(x_TxBxD, d_TxBxG))


@jax.custom_vjp
def input_projection(x_TxBxD, W_Dx4H, b_4H):
    """``x W_x + b`` for all time steps at once, per lane: a layer's input projection before its loop.

    Its own VJP so that the weight gradient is written as the product XLA:CPU runs
    without first transposing the (T*B, 4H) gate gradients (autodiff's form of it
    did: a 52 MB copy per minibatch at batch 64 x 100, hidden 512).
    """
    return tuple(x @ W_Dx4H + b_4H for x in x_TxBxD)


def _input_projection_fwd(x_TxBxD, W_Dx4H, b_4H):
    return input_projection(x_TxBxD, W_Dx4H, b_4H), (x_TxBxD, W_Dx4H)


def _input_projection_bwd(residuals, dxp_TxBx4H):
    x_TxBxD, W_Dx4H = residuals
    dW = weight_gradient(x_TxBxD, dxp_TxBx4H, W_Dx4H.dtype)
    W_4HxD = jnp.transpose(W_Dx4H)
    return (tuple(d @ W_4HxD for d in dxp_TxBx4H), dW, sum(d.sum((0, 1)) for d in dxp_TxBx4H))


input_projection.defvjp(_input_projection_fwd, _input_projection_bwd)


# Above this many FLOPs, one step's (B, H) x (H, 4H) product spreads over the cores by itself
# and lanes only add overhead, unless each lane keeps so many rows that its product alone runs
# near one core's peak (docs/performance.md: B64 x H512 one lane, B256 x H512 two).
_LANES_UP_TO_FLOPS = 64e6
_TALL_LANE_ROWS = 128
LANES = 2  # a constant, not the host's core count: the program, and so the result, is the config's


def default_lanes(batch_size: int, num_hiddens: int = 0) -> int:
    """Lanes on the CPU backend: 2 (at least 8 rows each) while a step's product is small or
    each lane keeps 128 rows or more; else, or on an accelerator, 1.

    A function of the model's sizes, never of the machine's cores: a run's program (and the
    order its lane gradients are summed in) is the same on every CPU."""
    if jax.default_backend() != "cpu":
        return 1
    small = 2 * batch_size * num_hiddens * 4 * num_hiddens <= _LANES_UP_TO_FLOPS
    if not small and batch_size // LANES < _TALL_LANE_ROWS:
        return 1
    lanes = max(1, min(LANES, batch_size // 8))
    while batch_size % lanes:
        lanes -= 1
    return lanes


def same_vma(tree):
    """Inside ``shard_map``: give every input the union of their varying mesh axes.

    A custom VJP must return each cotangent with its input's type: replicated weights get a
    gradient that varies across devices, so they are cast to varying *before* it, leaving
    the cross-device sum to autodiff of the cast (a psum). Outside shard_map: a no-op.
    """
    leaves, treedef = jax.tree.flatten(tree)
    varying = [_varying_axes(a) for a in leaves]
    union = frozenset().union(*varying)
    return jax.tree.unflatten(treedef, [
        a if v == union else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
        for a, v in zip(leaves, varying)])


def _varying_axes(a) -> frozenset:
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10
    return manual.varying if manual is not None else getattr(aval, "vma", frozenset())

