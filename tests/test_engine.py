"""The fast path (hand-written backward pass) computes the reference's function and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from conftest import assert_trees_close, run_cli
from lstm_jax.cells import lstm_kernel
from lstm_jax import concise, engine, models
from lstm_jax.cells.lstm import LSTMState
from lstm_jax.steps import loss_fn

V, H, B, T = 7, 6, 4, 5
default_lanes = engine.default_lanes  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def two_lanes(monkeypatch):
    """The batch in two lanes (as on a 2-core CPU at d2l's batch size), unless a test says otherwise."""
    monkeypatch.setattr(engine, "default_lanes", lambda batch_size, num_hiddens=0: 2 if batch_size % 2 == 0 else 1)


def random_inputs(seed, dtype=jnp.float32, scale=0.5, fresh=False, num_layers=1, embed_dim=0):
    """Weights large enough that the gates are far from linear; a zero or random state."""
    k = jax.random.split(jax.random.key(seed), 6)
    shapes = jax.eval_shape(lambda key: models.init_params(key, V, H, num_layers, embed_dim), k[0])
    leaves, tree = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(tree, [scale * jax.random.normal(jax.random.fold_in(k[1], i), s.shape, dtype)
                                       for i, s in enumerate(leaves)])
    shape = (B, num_layers, H)
    if fresh:
        state = LSTMState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    else:
        state = LSTMState(jax.random.normal(k[2], shape, dtype), jax.random.normal(k[3], shape, dtype))
    tokens = jax.random.randint(k[4], (B, T), 0, V)
    targets = jax.random.randint(k[5], (B, T), 0, V)
    return params, state, tokens, targets


def loss_and_grads(impl, params, state, tokens, targets, final_state_weight=0.0, lanes=None, key=None,
                   dropout=0.0):
    """Training loss (optionally + a term on the final state) and its gradients in params and state."""
    model = models.LanguageModel("scratch", V, H, impl=impl, num_layers=models.num_layers(params),
                              embed_dim=params["embed"].shape[1] if "embed" in params else 0, dropout=dropout)
    apply = model.apply if lanes is None else functools.partial(models.fast_apply, lanes=lanes, drop=model.drop)

    def loss(p, s):
        logits, new = apply(p, s, tokens, key)
        l = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return l + final_state_weight * (jnp.sum(new.h ** 2) + jnp.sum(jnp.sin(new.c)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, state)


def test_default_impl_is_fast():
    params, state, tokens, _ = random_inputs(0)
    fast = models.LanguageModel("scratch", V, H)
    np.testing.assert_array_equal(jax.jit(fast.apply)(params, state, tokens)[0],
                                  jax.jit(models.fast_apply)(params, state, tokens)[0])


@pytest.mark.parametrize("fresh,final_state_weight,lanes,transposed_h", [
    (True, 0.0, 2, True), (False, 0.0, 2, True), (True, 0.7, 1, True), (False, 0.7, 2, True),
    (False, 0.7, 4, True), (False, 0.7, 2, False), (True, 0.7, 1, False)])
def test_same_loss_and_gradients_float64(fresh, final_state_weight, lanes, transposed_h, monkeypatch):
    # final_state_weight > 0 also checks the cotangents of the returned state;
    # lanes = 4 runs each of the B = 4 rows as its own chain. transposed_h: both ways
    # of forming the weight gradient (the fast path picks one by rows per lane).
    monkeypatch.setattr(lstm_kernel, "_stores_transposed_h", lambda lane_rows: transposed_h)
    with jax.enable_x64(True):
        inputs = random_inputs(1, jnp.float64, fresh=fresh)
        loss_r, grads_r = loss_and_grads("reference", *inputs, final_state_weight=final_state_weight)
        loss_f, grads_f = loss_and_grads("fast", *inputs, final_state_weight=final_state_weight,
                                         lanes=lanes)
        assert loss_f.dtype == jnp.float64
        np.testing.assert_allclose(loss_f, loss_r, rtol=1e-12)
        assert_trees_close(grads_f, grads_r, rtol=1e-10, atol=1e-12)
        if fresh:
            assert float(jnp.abs(grads_f[1].h).max()) > 0  # the state gradient is not trivially zero


@pytest.mark.parametrize("num_layers,embed_dim,dropout,lanes", [
    (2, 0, 0.0, 2), (3, 0, 0.0, 1), (2, 3, 0.3, 2), (3, 4, 0.5, 4)])
def test_stacked_same_loss_and_gradients_float64(num_layers, embed_dim, dropout, lanes):
    # Every layer's weights, the embedding, the head and the carried state of every
    # layer; with dropout the same key drops the same units in both.
    with jax.enable_x64(True):
        inputs = random_inputs(11, jnp.float64, num_layers=num_layers, embed_dim=embed_dim)
        key = jax.random.key(3) if dropout else None
        kw = dict(final_state_weight=0.7, key=key, dropout=dropout)
        loss_r, grads_r = loss_and_grads("reference", *inputs, **kw)
        loss_f, grads_f = loss_and_grads("fast", *inputs, lanes=lanes, **kw)
        np.testing.assert_allclose(loss_f, loss_r, rtol=1e-12)
        assert_trees_close(grads_f, grads_r, rtol=1e-10, atol=1e-12)
        assert float(jnp.abs(grads_f[0]["layer1"]["W_xi"]).max()) > 1e-3  # upper layers really learn


@pytest.mark.parametrize("fresh", [True, False])
def test_same_loss_and_gradients_float32(fresh):
    inputs = random_inputs(2, fresh=fresh)
    loss_r, grads_r = loss_and_grads("reference", *inputs, final_state_weight=0.3)
    loss_f, grads_f = loss_and_grads("fast", *inputs, final_state_weight=0.3)
    np.testing.assert_allclose(loss_f, loss_r, rtol=1e-6)
    assert_trees_close(grads_f, grads_r, rtol=1e-4, atol=1e-6)


def test_same_outputs_and_final_state():
    params, state, tokens, _ = random_inputs(3)
    ref_logits, ref_state = models.reference_apply(params, state, tokens)
    logits, new_state = models.fast_apply(params, state, tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert_trees_close(new_state, ref_state, rtol=1e-5, atol=1e-6)


def test_check_grads_float64():
    with jax.enable_x64(True):
        params, state, tokens, targets = random_inputs(4, jnp.float64, num_layers=2)
        model = models.LanguageModel("scratch", V, H, impl="fast", num_layers=2)

        def loss(p, h, c):
            l, new = loss_fn(model, p, LSTMState(h, c), tokens, targets)
            return l + 0.5 * jnp.sum(new.h * new.c)

        # Reverse mode is the hand-written rule (against numerical differences).
        check_grads(jax.jit(loss), (params, state.h, state.c), order=1, modes=("rev",))


@pytest.mark.parametrize("num_steps", [T, 6, 7])  # 5 steps per loop iteration; 3; 1
@pytest.mark.parametrize("transposed_h", [True, False])
@pytest.mark.parametrize("peepholes", [False, True])
def test_check_grads_recurrence_and_head_float64(num_steps, transposed_h, peepholes, monkeypatch):
    monkeypatch.setattr(lstm_kernel, "_stores_transposed_h", lambda lane_rows: transposed_h)
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(5), 10)
        lanes = lambda shape, i: tuple(jax.random.normal(k[i + j], shape, jnp.float64) for j in range(2))
        xp, h0, c0 = lanes((num_steps, B // 2, 4 * H), 0), lanes((B // 2, H), 2), lanes((B // 2, H), 4)
        W = 0.5 * jax.random.normal(k[6], (H, 4 * H), jnp.float64)
        W_q, b_q = jax.random.normal(k[7], (H, V), jnp.float64), jax.random.normal(k[8], (V,), jnp.float64)
        q = {n: jax.random.normal(jax.random.fold_in(k[9], i), (H,), jnp.float64)
             for i, n in enumerate(lstm_kernel.PEEPHOLES)} if peepholes else {}
        check_grads(jax.jit(lstm_kernel.recurrence_and_head), (xp, W, W_q, b_q, h0, c0, q), order=1, modes=("rev",))
        check_grads(jax.jit(lstm_kernel.recurrence), (xp, W, h0, c0, q), order=1, modes=("rev",))


def test_one_time_step():
    # Prediction runs the model one token at a time.
    params, state, tokens, targets = random_inputs(6)
    loss_r, grads_r = loss_and_grads("reference", params, state, tokens[:, :1], targets[:, :1])
    loss_f, grads_f = loss_and_grads("fast", params, state, tokens[:, :1], targets[:, :1])
    np.testing.assert_allclose(loss_f, loss_r, rtol=1e-6)
    assert_trees_close(grads_f, grads_r, rtol=1e-4, atol=1e-6)


def test_vmap_over_trials():
    # A sweep vmaps the train step over trials: per-trial weights, states and data.
    trials = [random_inputs(10 + i) for i in range(3)]
    batched = [jax.tree.map(lambda *xs: jnp.stack(xs), *[t[i] for t in trials]) for i in range(4)]
    out = {}
    for impl in ("fast", "reference"):
        model = models.LanguageModel("scratch", V, H, impl=impl)
        grad = jax.value_and_grad(lambda p, s, x, y: loss_fn(model, p, s, x, y)[0], argnums=(0, 1))
        out[impl] = jax.jit(jax.vmap(grad))(*batched)
    np.testing.assert_allclose(out["fast"][0], out["reference"][0], rtol=1e-6)
    assert_trees_close(out["fast"][1], out["reference"][1], rtol=1e-4, atol=1e-6)
    # and each trial's result is what it gets on its own
    loss_0, grads_0 = loss_and_grads("fast", *trials[0])
    np.testing.assert_allclose(out["fast"][0][0], loss_0, rtol=1e-6)
    assert_trees_close(jax.tree.map(lambda a: a[0], out["fast"][1]), grads_0, rtol=1e-5, atol=1e-7)


def test_vmap_with_shared_weights():
    # Only the data batched (the weights broadcast): the weight gradient sums over the batch.
    params, state, _, _ = random_inputs(20)
    tokens = jax.random.randint(jax.random.key(21), (2, B, T), 0, V)
    targets = jax.random.randint(jax.random.key(22), (2, B, T), 0, V)

    grads = {}
    for impl in ("fast", "reference"):
        model = models.LanguageModel("scratch", V, H, impl=impl)
        f = lambda p, model=model: jax.vmap(lambda x, y: loss_fn(model, p, state, x, y)[0])(tokens, targets).sum()
        grads[impl] = jax.jit(jax.grad(f))(params)
    assert_trees_close(grads["fast"], grads["reference"], rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_matches_reference():
    params, state, tokens, targets = random_inputs(7)
    out = {}
    for impl in ("fast", "reference"):
        model = models.LanguageModel("scratch", V, H, "bfloat16", impl=impl)
        grad = jax.value_and_grad(lambda p, s: loss_fn(model, p, s, tokens, targets)[0], argnums=(0, 1))
        out[impl] = jax.jit(grad)(params, state)
    (loss_f, (gp_f, gs_f)), (loss_r, (gp_r, gs_r)) = out["fast"], out["reference"]
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(gp_f))  # params stay float32
    np.testing.assert_allclose(loss_f, loss_r, rtol=2e-2)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gp_r))
    assert_trees_close(gp_f, gp_r, rtol=0, atol=0.05 * scale)
    scale_s = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gs_r))
    assert_trees_close(gs_f, gs_r, rtol=0, atol=0.05 * scale_s)  # gradients for the carried state


def test_inside_shard_map():
    # Data parallelism: the batch split over a mesh axis, the weights replicated.
    # The custom VJP must give replicated weights the summed (invariant) gradient.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    params, state, tokens, targets = random_inputs(8)
    model = models.LanguageModel("scratch", V, H, impl="fast")

    def local_grads(p, s, x, y):
        return jax.grad(lambda p: loss_fn(model, p, s, x, y)[0])(p)

    sharded = jax.shard_map(local_grads, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")),
                            out_specs=P())
    grads = jax.jit(sharded)(params, state, tokens, targets)
    _, (grads_r, _) = loss_and_grads("reference", params, state, tokens, targets)
    assert_trees_close(grads, grads_r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 32, 35, 256])
def test_default_lanes_divide_the_batch(batch_size):
    lanes = default_lanes(batch_size, 256)
    assert lanes >= 1 and batch_size % lanes == 0
    assert lanes == 1 or batch_size // lanes >= 8  # never tiny lanes
    if batch_size // engine.LANES < 128:
        assert default_lanes(batch_size, 1024) == 1  # a product that large spreads over the cores by itself
    else:
        assert default_lanes(batch_size, 1024) > 1  # unless each lane's product is large enough alone


def test_lanes_are_a_function_of_the_model_sizes_only(monkeypatch):
    # A run's program (and the order its lane gradients are summed in) must not depend on the
    # host's core count: the same config compiles the same program on any CPU.
    import os

    before = [default_lanes(b, h) for b in (8, 32, 64, 256) for h in (64, 256, 1024)]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert [default_lanes(b, h) for b in (8, 32, 64, 256) for h in (64, 256, 1024)] == before
    assert default_lanes(32, 256) == 2 and default_lanes(64, 512) == 1 and default_lanes(256, 512) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_concise_fast_is_flax_concise(dtype):
    # flax's parameters (tree, initializers) run through the fast path: same loss and gradients.
    params, state, tokens, targets = random_inputs(9)
    flax_params = concise.scratch_to_concise(params)
    out = {}
    for impl in ("fast", "reference"):
        model = models.LanguageModel("concise", V, H, dtype, impl=impl)
        grad = jax.value_and_grad(lambda p, s: loss_fn(model, p, s, tokens, targets)[0], argnums=(0, 1))
        out[impl] = jax.jit(grad)(flax_params, state)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == "float32" else dict(rtol=0.1, atol=0.05)
    np.testing.assert_allclose(out["fast"][0], out["reference"][0], **tol)
    assert jax.tree.structure(out["fast"][1]) == jax.tree.structure(out["reference"][1])
    assert_trees_close(out["fast"][1], out["reference"][1], **tol)
    fast = models.LanguageModel("concise", V, H)
    ref = models.LanguageModel("concise", V, H, impl="reference")
    jax.tree.map(np.testing.assert_array_equal, fast.init(jax.random.key(0)), ref.init(jax.random.key(0)))


def test_config_selects_the_implementation():
    from lstm_jax import configs
    from lstm_jax.errors import UserError

    c = configs.get_base_config()
    runs = lambda: models.from_config(c, 28).runs
    assert c.lstm_impl is None and runs() == "fast"  # scratch: the fast path
    c.model = "concise"
    assert runs() == "reference"  # concise: flax's own cell
    c.lstm_impl = "fast"
    assert runs() == "fast"  # flax's parameters through the fast path, asked for by name
    c.lstm_impl = "slow"
    with pytest.raises(UserError, match="lstm_impl"):
        configs.validate(c)


@pytest.mark.slow
def test_the_fast_path_at_xlas_default_optimization_level(tmp_path):
    """The suite compiles with XLA's backend optimizations off (conftest); users run its default
    level, 3. The float64 fast = reference checks once more at that level, in their own process."""
    cases = ["tests/test_engine.py::test_stacked_same_loss_and_gradients_float64[2-3-0.3-2]",
             "tests/test_engine.py::test_same_loss_and_gradients_float64[False-0.7-2-True]"]
    out = run_cli("-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", *cases,
                  env={"XLA_FLAGS": "--xla_backend_optimization_level=3", "JAX_COMPILATION_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
