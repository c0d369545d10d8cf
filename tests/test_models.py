"""The two variants: d2l's math, flax's cell, one interface, stacked layers, dropout, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import assert_trees_close
from lstm_jax import cells, concise, models, regularize
from lstm_jax.cells import lstm
from lstm_jax.cells.lstm import LSTMState
from lstm_jax.steps import loss_fn

V, H, B, T = 7, 6, 3, 5


def random_inputs(seed, dtype=jnp.float32, scale=0.5, num_layers=1, embed_dim=0):
    """Weights large enough that the gates are far from linear, plus a non-zero state."""
    k = jax.random.split(jax.random.key(seed), 5)
    shapes = jax.eval_shape(lambda: models.init_params(k[0], V, H, num_layers, embed_dim))
    leaves, tree = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(tree, [scale * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, dtype)
                                       for i, s in enumerate(leaves)])
    shape = (B, num_layers, H)
    state = LSTMState(jax.random.normal(k[2], shape, dtype), jax.random.normal(k[3], shape, dtype))
    tokens = jax.random.randint(k[4], (B, T), 0, V)
    return params, state, tokens


def test_init_matches_d2l():
    p = models.init_params(jax.random.key(0), 28, 256)
    assert tuple(p) == lstm.PARAM_NAMES
    assert p["W_xi"].shape == (28, 256) and p["W_hi"].shape == (256, 256) and p["W_hq"].shape == (256, 28)
    for name, a in p.items():
        if name.startswith("b_"):
            assert not np.any(a)
        else:
            assert abs(float(a.std()) - 0.01) < 0.001 and abs(float(a.mean())) < 0.001
    deep = models.init_params(jax.random.key(0), 28, 64, num_layers=3, embed_dim=16)
    assert set(deep) == {*lstm.PARAM_NAMES, "layer1", "layer2", "embed"}
    assert deep["W_xi"].shape == (16, 64) and deep["layer2"]["W_xc"].shape == (64, 64)
    assert tuple(deep["layer1"]) == lstm.LAYER_NAMES and deep["embed"].shape == (28, 16)
    assert models.num_layers(deep) == 3
    # one layer's weights do not depend on the layers added above it
    np.testing.assert_array_equal(models.init_params(jax.random.key(0), 28, 64, 2)["W_hq"],
                                  models.init_params(jax.random.key(0), 28, 64, 1)["W_hq"])


def _named(params):
    return {"/".join(str(k.key) for k in path): a for path, a in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("cell", cells.NAMES)
def test_init_schemes_draw_every_cells_arrays_by_their_role(cell):
    """flax's: orthogonal recurrent matrices, LeCun-normal others; uniform: within the bound; d2l's
    scale; vectors that are not biases (gains, peepholes) and the forget bias keep their meaning."""
    args = (jax.random.key(3), 40, 64, 2, 24, cell, 0, 1.0 if cell in ("lstm", "lstm_peephole") else 0.0)
    d2l = _named(models.init_params(*args))
    flax, uniform = (_named(models.init_params(*args, init=i)) for i in ("flax", "uniform"))
    scaled = _named(models.init_params(*args, init_scale=0.05))
    wide = _named(models.init_params(*args, init="uniform", init_scale=0.3))
    for name, a in d2l.items():
        leaf = name.split("/")[-1]
        if a.ndim == 2 and leaf != "embed":
            if leaf.startswith("W_h") and leaf != "W_hq":  # recurrent (and LSTMP's projection)
                small = min(a.shape)
                gram = flax[name].T @ flax[name] if a.shape[0] >= a.shape[1] else flax[name] @ flax[name].T
                np.testing.assert_allclose(gram, np.eye(small), atol=1e-5, err_msg=name)
            else:
                assert abs(float(flax[name].std()) * np.sqrt(a.shape[0]) - 1) < 0.15, name
            np.testing.assert_allclose(scaled[name], 5 * a, rtol=1e-6)
        elif a.ndim == 3:  # slstm's heads: each block of the recurrent weights orthogonal
            for block in flax[name]:
                np.testing.assert_allclose(block.T @ block, np.eye(block.shape[0]), atol=1e-5, err_msg=name)
            np.testing.assert_allclose(scaled[name], 5 * a, rtol=1e-6)
        else:
            np.testing.assert_array_equal(flax[name], a, err_msg=name)
        if leaf.startswith(("W_", "b_", "embed")):
            u = uniform[name] - (a if leaf.startswith("b_") else 0)
            assert float(jnp.abs(u).max()) <= 64 ** -0.5 and float(jnp.abs(u).max()) > 0.8 * 64 ** -0.5, name
            assert float(jnp.abs(wide[name] - (a if leaf.startswith("b_") else 0)).max()) > 0.25, name
        else:
            np.testing.assert_array_equal(uniform[name], a, err_msg=name)  # gains, peepholes
    if "b_f" in d2l:
        assert float(uniform["b_f"].mean()) == pytest.approx(args[-1], abs=0.03)
    np.testing.assert_array_equal(d2l["W_hq"], _named(models.init_params(*args, init="d2l", init_scale=0.01))["W_hq"])


@pytest.mark.parametrize("fields,message", [
    (dict(init="zaremba"), "config.init must be one of 'd2l', 'flax', 'uniform', got 'zaremba'"),
    (dict(init="flax", init_scale=0.1), "config.init_scale=0.1: init='flax' has no scale"),
    (dict(model="concise", init="uniform"), "model='concise' uses flax's own initializers"),
    (dict(init_scale=-1.0), "config.init_scale must be >= 0, got -1.0"),
    (dict(tie_weights=True, embed_dim=3), "config.tie_weights=True: the embedding (embed_dim=3) must be as wide as"),
    (dict(tie_weights=True, model="concise"), "the concise model (flax's cells) does not tie"),
])
def test_init_fields_are_checked_with_one_line(tiny_config, fields, message):
    from lstm_jax import configs
    from lstm_jax.errors import UserError

    for k, v in fields.items():
        tiny_config[k] = v
    with pytest.raises(UserError) as e:
        configs.validate(tiny_config)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cell,impl", [("lstm", "fast"), ("lstm", "reference"), ("gru_reset_after", "fast"),
                                       ("lstm_proj", "reference")])
def test_tied_weights_are_one_array_serving_input_and_head(cell, impl):
    """The tied model is the untied one with W_hq = embed^T: same logits, and the embedding's gradient
    is the sum of both uses' (Press & Wolf 2017)."""
    E = 3 if cell == "lstm_proj" else H
    dropout = 0.0 if (cell, impl) == ("lstm", "fast") else 0.3  # 0: the LSTM kernel's fused head
    kw = dict(embed_dim=E, num_layers=2, dropout=dropout, cell=cell, impl=impl, proj_size=3 if cell == "lstm_proj" else 0)
    tied = models.LanguageModel("scratch", V, H, tie_weights=True, initializer="uniform", **kw)
    p = tied.init(jax.random.key(0))
    assert "W_hq" not in p and p["embed"].shape == (V, E) and float(jnp.abs(p["embed"]).max()) <= H ** -0.5
    untied, q = models.LanguageModel("scratch", V, H, **kw), dict(p, W_hq=p["embed"].T)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    grad = lambda m, params: jax.jit(jax.grad(lambda x: loss_fn(m, x, m.initial_state(B), tokens, tokens,
                                                                jax.random.key(2))[0]))(params)
    np.testing.assert_allclose(jax.jit(tied.apply)(p, tied.initial_state(B), tokens)[0],
                               jax.jit(untied.apply)(q, untied.initial_state(B), tokens)[0], rtol=1e-6)
    gt, gu = grad(tied, p), grad(untied, q)
    np.testing.assert_allclose(gt["embed"], gu["embed"] + gu["W_hq"].T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gt["b_q"], gu["b_q"], rtol=1e-5, atol=1e-7)


def test_lstm_step_is_the_d2l_formula():
    params, state, tokens = random_inputs(0)
    x = tokens[:, 0]
    h0, c0 = state.h[:, 0], state.c[:, 0]
    onehot = jax.nn.one_hot(x, V)
    gate = lambda g: onehot @ params[f"W_x{g}"] + h0 @ params[f"W_h{g}"] + params[f"b_{g}"]
    I, F, O = (jax.nn.sigmoid(gate(g)) for g in "ifo")
    C = F * c0 + I * jnp.tanh(gate("c"))
    (h, c), out = lstm.lstm_step(params, (h0, c0), x)
    np.testing.assert_allclose(c, C, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, O * jnp.tanh(C), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out, h)
    # the same step from input vectors (an upper layer, an embedding): the one-hot rows
    (h2, c2), _ = lstm.lstm_step(params, (h0, c0), onehot)
    np.testing.assert_allclose(h2, h, rtol=1e-6, atol=1e-7)


def test_stacked_layers_feed_each_other():
    # Layer 2 of a 2-layer model sees layer 1's hidden states: running the layers by
    # hand, one scan each, gives the stack's logits and final state.
    params, state, tokens = random_inputs(1, num_layers=2)
    logits, final = models.reference_apply(params, state, tokens)
    x, hs = tokens.T, []
    for l in range(2):
        p = models.layer(params, l)
        (h, c), x = jax.lax.scan(lambda carry, x_t: lstm.lstm_step(p, carry, x_t), LSTMState(state.h[:, l], state.c[:, l]), x)
        hs.append((h, c))
    np.testing.assert_allclose(logits, jnp.swapaxes(x, 0, 1) @ params["W_hq"] + params["b_q"], rtol=1e-6)
    for l, (h, c) in enumerate(hs):
        np.testing.assert_array_equal(final.h[:, l], h)
        np.testing.assert_array_equal(final.c[:, l], c)


def test_dropout_only_in_training_and_only_off_the_recurrence():
    params, state, tokens = random_inputs(2, num_layers=2, embed_dim=4)
    model = models.LanguageModel("scratch", V, H, impl="reference", num_layers=2, embed_dim=4, dropout=0.5)
    plain = models.LanguageModel("scratch", V, H, impl="reference", num_layers=2, embed_dim=4)
    eval_logits, _ = model.apply(params, state, tokens)  # no key: evaluation, no dropout
    np.testing.assert_array_equal(eval_logits, plain.apply(params, state, tokens)[0])
    a = model.apply(params, state, tokens, jax.random.key(1))[0]
    b = model.apply(params, state, tokens, jax.random.key(1))[0]
    c = model.apply(params, state, tokens, jax.random.key(2))[0]
    np.testing.assert_array_equal(a, b)  # a function of the key
    assert not np.allclose(a, c) and not np.allclose(a, eval_logits)
    x = jnp.ones((4, 100, 8))
    dropped = regularize.dropout(jax.random.key(0), 3, x, 0.25)
    np.testing.assert_allclose(np.unique(dropped), [0.0, 1 / 0.75], rtol=1e-6)  # inverted: mean kept
    assert abs(float((dropped == 0).mean()) - 0.25) < 0.03


def test_check_grads_lstm_step_float64():
    with jax.enable_x64(True):
        params, state, tokens = random_inputs(1, jnp.float64)
        step = jax.jit(lambda p, h, c: lstm.lstm_step(p, (h, c), tokens[:, 0]))
        check_grads(step, (params, state.h[:, 0], state.c[:, 0]), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("num_layers,embed_dim,order", [
    (1, 0, 1), (2, 3, 1), pytest.param(1, 0, 2, marks=pytest.mark.slow)])
def test_check_grads_sequence_loss_float64(num_layers, embed_dim, order):
    with jax.enable_x64(True):
        params, state, tokens = random_inputs(2, jnp.float64, num_layers=num_layers, embed_dim=embed_dim)
        targets = jnp.roll(tokens, -1, axis=1)
        # The reference (autodiff) path; tests/test_engine.py checks the fast path against it.
        model = models.LanguageModel("scratch", V, H, impl="reference", num_layers=num_layers,
                                  embed_dim=embed_dim, dropout=0.3)
        key = jax.random.key(5)

        def loss(p, h, c):
            return loss_fn(model, p, LSTMState(h, c), tokens, targets, key)[0]

        assert loss(params, *state).dtype == jnp.float64
        check_grads(jax.jit(loss), (params, state.h, state.c), order=order, modes=("fwd", "rev"))


def test_param_mapping_round_trip():
    for num_layers, embed_dim in ((1, 0), (3, 4)):
        params, _, _ = random_inputs(3, num_layers=num_layers, embed_dim=embed_dim)
        flax_params = concise.scratch_to_concise(params)
        flax_model = models.LanguageModel("concise", V, H, num_layers=num_layers, embed_dim=embed_dim)
        expected = jax.eval_shape(flax_model.init, jax.random.key(0))
        assert jax.tree.structure(flax_params) == jax.tree.structure(expected)
        assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, expected)
        back = concise.concise_to_scratch(flax_params)
        jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("seed,scratch_impl,num_layers,embed_dim,dropout", [
    (0, "reference", 1, 0, 0.0), (1, "reference", 2, 0, 0.0), (2, "fast", 1, 0, 0.0),
    (3, "fast", 2, 4, 0.4), (4, "reference", 3, 0, 0.2)])
def test_scratch_and_flax_agree_on_logits_loss_and_gradients(seed, scratch_impl, num_layers, embed_dim,
                                                               dropout):
    # Against flax's own OptimizedLSTMCell (the concise default): d2l's math and the fast path.
    params, state, tokens = random_inputs(seed, num_layers=num_layers, embed_dim=embed_dim)
    targets = jax.random.randint(jax.random.key(seed + 100), (B, T), 0, V)
    key = jax.random.key(seed) if dropout else None
    kw = dict(num_layers=num_layers, embed_dim=embed_dim, dropout=dropout)
    scratch = models.LanguageModel("scratch", V, H, impl=scratch_impl, **kw)
    flax_model = models.LanguageModel("concise", V, H, **kw)
    flax_params = concise.scratch_to_concise(params)

    logits_s, state_s = jax.jit(scratch.apply)(params, state, tokens, key)
    logits_c, state_c = jax.jit(flax_model.apply)(flax_params, state, tokens, key)
    assert logits_s.shape == (B, T, V) and float(jnp.abs(logits_s).max()) > 0.5  # not a trivial output
    np.testing.assert_allclose(logits_s, logits_c, rtol=1e-5, atol=1e-5)
    assert_trees_close(state_s, state_c, rtol=1e-5, atol=1e-6)

    grad = lambda m: jax.jit(jax.value_and_grad(functools.partial(loss_fn, m), has_aux=True))
    (loss_s, _), g_s = grad(scratch)(params, state, tokens, targets, key)
    (loss_c, _), g_c = grad(flax_model)(flax_params, state, tokens, targets, key)
    np.testing.assert_allclose(loss_s, loss_c, rtol=1e-6)
    assert float(loss_s) > 0.5  # a real loss, not a degenerate zero
    assert_trees_close(g_s, concise.concise_to_scratch(g_c), rtol=1e-4, atol=1e-6)


def test_concise_default_runs_flax_cell():
    # "concise" is the library's layer: by default its apply IS flax's module, not our fast path.
    params, state, tokens = random_inputs(5)
    flax_params = concise.scratch_to_concise(params)
    flax_model = models.LanguageModel("concise", V, H)
    module = concise.ConciseModel("lstm", V, H)
    np.testing.assert_array_equal(flax_model.apply(flax_params, state, tokens)[0],
                                  module.apply(flax_params, state, tokens)[0])
    jaxpr = str(jax.make_jaxpr(flax_model.apply)(flax_params, state, tokens))
    assert "custom_vjp" not in jaxpr
    fast = str(jax.make_jaxpr(models.LanguageModel("concise", V, H, impl="fast").apply)(flax_params, state, tokens))
    assert "custom_vjp" in fast


@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_bfloat16_compute_keeps_float32_params_and_logits(variant):
    model = models.LanguageModel(variant, V, H, "bfloat16")
    params, state, tokens = random_inputs(6)
    if variant == "concise":
        params = concise.scratch_to_concise(params)
    logits, new = model.apply(params, state, tokens)
    assert logits.dtype == jnp.float32 and new.h.dtype == jnp.bfloat16
    ref, _ = models.LanguageModel(variant, V, H).apply(params, state, tokens)
    scale = float(jnp.abs(ref).max())
    assert scale > 1  # the weights make real logits, so the tolerance below means something
    np.testing.assert_allclose(logits, ref, atol=0.02 * scale)
    assert not np.array_equal(logits, ref)  # bf16 really ran


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_after", "min_lstm"])
def test_a_narrower_last_layer_is_each_layer_run_in_turn(cell):
    """AWD-LSTM's shape (layers H, H, E; tied head): the stacked model is each layer's own scan, fed the
    layer before's outputs; the narrower layer's state rows end in zeros; engine = reference in float64."""
    E = 4
    with jax.enable_x64(True):
        kw = dict(num_layers=3, embed_dim=E, tie_weights=True, last_hiddens=E, cell=cell, initializer="uniform",
                  init_scale=0.5)
        model = models.LanguageModel("scratch", V, H, **kw)
        p = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0)))
        assert p["embed"].shape == (V, E) and p["layer2"]["b_" + ("h" if cell == "min_lstm" else "n" if "gru" in cell else "c")].shape == (E,)
        c, tokens = cells.get(cell), jax.random.randint(jax.random.key(1), (B, T), 0, V)
        state = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape, jnp.float64),
                             model.initial_state(B))
        state = jax.tree.map(lambda a: a.at[:, 2, E:].set(0), state)
        x, finals = jnp.take(p["embed"], tokens.T, axis=0), []
        for l, width in enumerate((H, H, E)):
            s0 = c.State(*(a[:, l, :width] for a in state))
            s, x = jax.jit(lambda s0, x: jax.lax.scan(lambda s, x_t: c.step(models.layer(p, l), s, x_t), s0, x))(s0, x)
            finals.append(s)
        expected = jnp.swapaxes(x @ p["embed"].T + p["b_q"], 0, 1)
        impls = ["reference", "fast"] if c.engine else ["reference"]
        for impl in impls:
            m = models.LanguageModel("scratch", V, H, impl=impl, **kw)
            logits, final = jax.jit(m.apply)(p, state, tokens)
            np.testing.assert_allclose(logits, expected, rtol=1e-10)
            for l, width in enumerate((H, H, E)):
                for a, b in zip(final, finals[l]):
                    np.testing.assert_allclose(a[:, l, :width], b, rtol=1e-10, atol=1e-12)
            assert not np.any(np.asarray(final[0][:, 2, E:]))
        grads = [jax.jit(jax.grad(lambda p: loss_fn(models.LanguageModel("scratch", V, H, impl=i, dropout=0.3, **kw),
                                                    p, state, tokens, tokens, jax.random.key(3))[0]))(p) for i in impls]
        for g in grads[1:]:
            assert_trees_close(g, grads[0], rtol=1e-9, atol=1e-12)
