"""The modern cells against their authors' code, in float64: minGRU and minLSTM against
``mingru-pytorch`` (lucidrains', pure PyTorch), sLSTM against the ``xlstm`` package's pure-PyTorch
reference (``blocks/slstm/src/vanilla``); the parallel scan against the sequential definition;
parallel training against step-by-step evaluation; the engine's sLSTM against its step, heads included.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import cells, engine, models
from lstm_jax.steps import loss_fn

torch = pytest.importorskip("torch")
close = functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12)
H, B, T = 6, 3, 9


def layer(name, D, seed=0, num_heads=1, zero_state=False):
    """Random float64 parameters (large enough to leave the gates' linear range), state and inputs."""
    cell, o = cells.get(name), cells.Options(H, num_heads=num_heads)
    k = jax.random.split(jax.random.key(seed), 3)
    shapes = jax.eval_shape(lambda: cell.init(k[0], D, o))
    params = {n: 0.8 * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, jnp.float64)
              for i, (n, s) in enumerate(shapes.items())}
    sizes = cell.state_sizes(o)
    # a random state is positive, as the min cells' h and sLSTM's n always are
    state = cell.State(*(jnp.zeros((B, n), jnp.float64) if zero_state else
                         jnp.abs(jax.random.normal(jax.random.fold_in(k[2], i), (B, n), jnp.float64)) + 0.1
                         for i, n in enumerate(sizes)))
    x = jax.random.normal(jax.random.fold_in(k[2], 99), (T, B, D), jnp.float64)
    return cell, params, state, x


def jax_run(run, params, state, x):
    """Outputs (T, B, H), final state, and the gradients of a fixed random functional of both."""
    hs, final = jax.jit(run)(params, state, x)
    R = np.random.default_rng(1)
    weights = jax.tree.map(lambda a: jnp.asarray(R.normal(size=a.shape)), (hs, final))
    value = lambda p, s, x: sum(jnp.sum(a * w) for a, w in zip(jax.tree.leaves(run(p, s, x)), jax.tree.leaves(weights)))
    return hs, final, jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))(params, state, x), weights


def scan(cell):
    return lambda p, s, x: jax.lax.scan(lambda s, x_t: cell.step(p, s, x_t), s, x)[::-1]


def parallel(cell, associative=True):
    """The cell's whole-sequence function: the log-space associative scan (accelerators' default) or
    the loop over time in linear space (the CPU's)."""
    return lambda p, s, x: cell.sequence(p, s, x, parallel=associative)[::-1]


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
@pytest.mark.parametrize("zero_state", [False, True])
@pytest.mark.parametrize("associative", [True, False])
def test_whole_sequence_equals_the_sequential_definition(name, zero_state, associative):
    with jax.enable_x64(True):
        cell, p, s, x = layer(name, 5, zero_state=zero_state)
        a, b = jax_run(scan(cell), p, s, x), jax_run(parallel(cell, associative), p, s, x)
    for u, v in zip(jax.tree.leaves(a[:3]), jax.tree.leaves(b[:3])):
        close(u, v)


def _mingru(name):
    mingru = pytest.importorskip("minGRU_pytorch")
    from minGRU_pytorch.minLSTM import minLSTM

    return mingru.minGRU(H) if name == "min_gru" else minLSTM(H)


# mingru-pytorch's Linear has no biases and takes (hidden, gates...) side by side
_THEIR_ORDER = {"min_gru": "hz", "min_lstm": "hfi"}


def _their_weights(name, p):
    return np.concatenate([p[f"W_x{g}"] for g in _THEIR_ORDER[name]], axis=1).T


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_min_cells_equal_mingru_pytorch_step_by_step(name):
    # Their sequential mode (one step per call, the state passed on), biases zero: outputs, final
    # state and every gradient (weights, inputs, initial state).
    with jax.enable_x64(True):
        cell, p, s, x = layer(name, H)
        p = {k: jnp.zeros_like(v) if k.startswith("b_") else v for k, v in p.items()}
        hs, final, (value, (g_p, g_s, g_x)), (w_hs, w_final) = jax_run(parallel(cell), p, s, x)
    m = _mingru(name).double()
    weight = next(m.parameters())
    with torch.no_grad():
        weight.copy_(torch.tensor(_their_weights(name, p)))
    tx, th = t(np.swapaxes(x, 0, 1)), t(s.h)
    prev, outs = th[:, None], []
    for i in range(T):
        out, prev = m(tx[:, i:i + 1], prev, return_next_prev_hidden=True)
        outs.append(out)
    t_hs = torch.cat(outs, 1).transpose(0, 1)
    t_value = (t_hs * t(w_hs)).sum() + (prev[:, 0] * t(w_final[0])).sum()
    t_value.backward()
    close(value, t_value.item())
    close(hs, t_hs.detach().numpy())
    close(final.h, prev[:, 0].detach().numpy())
    g_w = weight.grad.numpy().T
    for i, g in enumerate(_THEIR_ORDER[name]):
        close(g_p[f"W_x{g}"], g_w[:, i * H:(i + 1) * H], err_msg=g)
    close(g_s.h, th.grad.numpy())
    close(g_x, np.swapaxes(tx.grad.numpy(), 0, 1))


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_mingru_pytorchs_parallel_path(name):
    # Their parallel mode equals ours from a zero state; from a carried state their minGRU does too,
    # while their minLSTM takes log_g(h) where log(h) is meant (h > 0 already), so it differs:
    # the finding the issue asked us to check.
    with jax.enable_x64(True):
        cell, p, s, x = layer(name, H)
        p = {k: jnp.zeros_like(v) if k.startswith("b_") else v for k, v in p.items()}
        ours = {zero: np.asarray(cell.sequence(p, cell.State(s.h * (not zero)), x, parallel=True)[1])
                for zero in (True, False)}
    m = _mingru(name).double()
    with torch.no_grad():
        next(m.parameters()).copy_(torch.tensor(_their_weights(name, p)))
        tx = torch.tensor(np.swapaxes(np.asarray(x), 0, 1))
        theirs_zero = m(tx).transpose(0, 1).numpy()
        theirs_carried = m(tx, torch.tensor(np.asarray(s.h))[:, None]).transpose(0, 1).numpy()
    close(ours[True], theirs_zero)
    if name == "min_gru":
        close(ours[False], theirs_carried)
    else:
        assert np.abs(ours[False] - theirs_carried).max() > 1e-3


def _xlstm():
    try:
        from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry
    except Exception as e:  # noqa: BLE001 - the package pulls GPU kernel packages in some versions
        pytest.skip(f"xlstm's vanilla sLSTM does not import here: {e}")
    return functools.partial(slstm_forward, pointwise_forward=slstm_pointwise_function_registry["slstm"])


@pytest.mark.parametrize("zero_state", [False, True])
def test_slstm_equals_xlstm_vanilla(zero_state):
    # xlstm's reference takes the input projections Wx (S, B, 4H), the recurrent kernel R
    # (heads, 4 * H/heads, H/heads), the bias (4H,) and the states (4, B, H); gates i, f, z, o.
    K, D = 2, 5
    forward = _xlstm()
    with jax.enable_x64(True):
        cell, p, s, x = layer("slstm", D, num_heads=K, zero_state=zero_state)
        hs, final, (value, (g_p, g_s, g_x)), (w_hs, w_final) = jax_run(scan(cell), p, s, x)
    tp = {k: t(v) for k, v in p.items()}
    ts, tx = [t(a) for a in s], t(x)
    Wx = tx @ torch.cat([tp[f"W_x{g}"] for g in "ifzo"], 1)
    R = torch.cat([tp[f"W_h{g}"] for g in "ifzo"], 2).transpose(1, 2)
    b = torch.cat([tp[f"b_{g}"] for g in "ifzo"])
    states_all, t_final, _ = forward(Wx, torch.stack(ts), R, b)
    t_hs = states_all[0, 1:]
    t_value = (t_hs * t(w_hs)).sum() + sum((a * t(w)).sum() for a, w in zip(t_final, w_final))
    t_value.backward()
    close(value, t_value.item())
    close(hs, t_hs.detach().numpy())
    for a, b_ in zip(final, t_final):
        close(a, b_.detach().numpy())
    for n in g_p:
        close(g_p[n], tp[n].grad.numpy(), err_msg=n)
    if not zero_state:  # from zeros the first step's n == 0 branch makes the state's gradient its own
        for a, b_ in zip(g_s, ts):
            close(a, b_.grad.numpy())
    close(g_x, tx.grad.numpy())


def test_slstm_engine_equals_its_step_with_heads():
    with jax.enable_x64(True):
        cell, p, s, x = layer("slstm", 5, num_heads=3)
        eng = cell.engine

        def through_engine(p, s, x):
            W, b = eng.input_weights(p)
            (hs,), (final,) = engine.cell_recurrence(eng.pointwise, eng.additive, {}, (x @ W + b,),
                                                     eng.recurrent_weights(p), (s,))
            return hs, final

        a, b = jax_run(scan(cell), p, s, x), jax_run(through_engine, p, s, x)
    for u, v in zip(jax.tree.leaves(a[:3]), jax.tree.leaves(b[:3])):
        close(u, v)


@pytest.mark.parametrize("zero_state", [False, True])
def test_slstm_hand_written_reverse_step_equals_autodiff(zero_state):
    # engine.factored_recurrence with sLSTM's linearize / transpose against jax.vjp of its elementwise
    # step (engine.cell_recurrence), from random and zero states, with exact ties of max(i~, m + log sig(f~))
    # (two units of row 0 at step 0) and of min(exp(.), 1) (at every m = i~ or m = m + log sig(f~)).
    with jax.enable_x64(True):
        cell, p, s, x = layer("slstm", 5, num_heads=3, zero_state=zero_state)
        eng = cell.engine
        W_x, b = eng.input_weights(p)
        W_h = eng.recurrent_weights(p)
        xp = x @ W_x + b
        if not zero_state:
            hh = s.h @ W_h
            xp = xp.at[0, 0, H:H + 2].set(60.0 - hh[0, H:H + 2])  # log sig(f~) = -1e-26: m + it is m
            s = s._replace(m=s.m.at[0, :2].set((xp[0] + hh)[0, :2]))  # m = i~ exactly
            assert bool(jnp.all(s.m[0, :2] + jax.nn.log_sigmoid(xp[0, 0, H:H + 2] + hh[0, H:H + 2])
                                == (xp[0] + hh)[0, :2]))

        def run(recurrence):  # differentiable in W_h, the state and the input projections
            def f(W_h, s, xp):
                (hs,), (final,) = recurrence((xp,), W_h, (s,))
                return hs, final
            return f

        generic = run(lambda xp, W, s: engine.cell_recurrence(eng.pointwise, True, {}, xp, W, s))
        by_hand = run(lambda xp, W, s: engine.factored_recurrence(eng.linearize, eng.transpose, xp, W, s))
        a, b_ = jax_run(generic, W_h, s, xp), jax_run(by_hand, W_h, s, xp)
    for u, v in zip(jax.tree.leaves(a[:3]), jax.tree.leaves(b_[:3])):
        close(u, v)


@pytest.mark.parametrize("name", ["min_gru", "min_lstm", "slstm"])
def test_training_loss_equals_step_by_step_evaluation(name):
    # The whole sequence at once (parallel for the min cells) and one token per call, state carried.
    V = 11
    model = models.LanguageModel("scratch", V, 16, num_layers=2, cell=name, embed_dim=8, initializer="flax",
                                 num_heads=2 if name == "slstm" else 1)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, V)
    whole, final = jax.jit(lambda p: model.apply(p, model.initial_state(4), tokens))(params)
    assert model.runs == {"slstm": "fast"}.get(name, "parallel")
    scanned = dataclasses.replace(model, impl="reference")  # autodiff of the step under lax.scan
    np.testing.assert_allclose(scanned.apply(params, model.initial_state(4), tokens)[0], whole, rtol=1e-5, atol=1e-6)
    one = jax.jit(lambda p, s, x: model.apply(p, s, x))
    state, steps = model.initial_state(4), []
    for i in range(tokens.shape[1]):
        logits, state = one(params, state, tokens[:, i:i + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(final, state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loss, _ = loss_fn(model, params, model.initial_state(4), tokens, tokens)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(jnp.concatenate(steps, 1)), tokens[..., None], -1).mean()
    np.testing.assert_allclose(loss, nll, rtol=1e-5)


@pytest.mark.parametrize("fields,message", [
    (dict(cell="lstm", num_heads=2), "config.num_heads=2: cell lstm has no heads (only slstm)"),
    (dict(cell="slstm", num_heads=3, num_hiddens=16), "config.num_heads=3: must divide num_hiddens=16 and"),
    (dict(cell="min_gru", weight_drop=0.5), "config.weight_drop=0.5: cell min_gru has no recurrent weights"),
    (dict(cell="min_gru", forget_bias=1.0), "cell min_gru (scratch) has no forget-gate bias"),
])
def test_modern_cell_fields_are_checked_with_one_line(tiny_config, fields, message):
    from lstm_jax import configs
    from lstm_jax.errors import UserError

    for k, v in fields.items():
        tiny_config[k] = v
    with pytest.raises(UserError) as e:
        configs.validate(tiny_config)
    assert message in str(e.value) and "\n" not in str(e.value)
