import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm_jax import lstm, models
from lstm_jax.lstm import LSTMState
from lstm_jax.train import loss_fn

V, H, B, T = 7, 6, 3, 5


def random_inputs(seed, dtype=jnp.float32, scale=0.5):
    """Weights large enough that the gates are far from linear, plus a non-zero state."""
    k = jax.random.split(jax.random.key(seed), 5)
    params = jax.tree.map(lambda a: a.astype(dtype), lstm.init_params(k[0], V, H))
    params = {n: (scale * jax.random.normal(jax.random.fold_in(k[1], i), p.shape, dtype))
              for i, (n, p) in enumerate(params.items())}
    state = LSTMState(jax.random.normal(k[2], (B, H), dtype), jax.random.normal(k[3], (B, H), dtype))
    tokens = jax.random.randint(k[4], (B, T), 0, V)
    return params, state, tokens


def test_init_matches_d2l():
    p = lstm.init_params(jax.random.key(0), 28, 256)
    assert tuple(p) == lstm.PARAM_NAMES
    assert p["W_xi"].shape == (28, 256) and p["W_hi"].shape == (256, 256) and p["W_hq"].shape == (256, 28)
    for name, a in p.items():
        if name.startswith("b_"):
            assert not np.any(a)
        else:
            assert abs(float(a.std()) - 0.01) < 0.001 and abs(float(a.mean())) < 0.001


def test_lstm_step_is_the_d2l_formula():
    params, state, tokens = random_inputs(0)
    x = tokens[:, 0]
    onehot = jax.nn.one_hot(x, V)
    gate = lambda g: onehot @ params[f"W_x{g}"] + state.h @ params[f"W_h{g}"] + params[f"b_{g}"]
    I, F, O = (jax.nn.sigmoid(gate(g)) for g in "ifo")
    C = F * state.c + I * jnp.tanh(gate("c"))
    new, h = lstm.lstm_step(params, state, x)
    np.testing.assert_allclose(new.c, C, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, O * jnp.tanh(C), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(new.h, h)


def test_check_grads_lstm_step_float64():
    with jax.enable_x64(True):
        params, state, tokens = random_inputs(1, jnp.float64)
        step = lambda p, h, c: lstm.lstm_step(p, LSTMState(h, c), tokens[:, 0])
        check_grads(step, (params, state.h, state.c), order=2, modes=("fwd", "rev"))


def test_check_grads_sequence_loss_float64():
    with jax.enable_x64(True):
        params, state, tokens = random_inputs(2, jnp.float64)
        targets = jnp.roll(tokens, -1, axis=1)
        # The reference (autodiff) path: the fast path's custom VJP has no forward
        # mode; tests/test_fast_lstm.py checks it in reverse mode and against this.
        model = models.make_model("scratch", V, H, impl="reference")

        def loss(p, h, c):
            return loss_fn(model, p, LSTMState(h, c), tokens, targets)[0]

        assert loss(params, *state).dtype == jnp.float64
        check_grads(loss, (params, state.h, state.c), order=2, modes=("fwd", "rev"))


def test_param_mapping_round_trip():
    params, _, _ = random_inputs(3)
    flax_params = models.scratch_to_concise(params)
    concise = models.make_model("concise", V, H)
    expected = jax.eval_shape(concise.init, jax.random.key(0))
    assert jax.tree.structure(flax_params) == jax.tree.structure(expected)
    assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, expected)
    back = models.concise_to_scratch(flax_params)
    assert tuple(back) == lstm.PARAM_NAMES
    jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("seed,scratch_impl", [(0, "reference"), (1, "reference"), (2, "fast")])
def test_scratch_and_flax_agree_on_logits_loss_and_gradients(seed, scratch_impl):
    # Against flax's own OptimizedLSTMCell (impl="reference"): d2l's math and the fast path.
    params, state, tokens = random_inputs(seed)
    targets = jax.random.randint(jax.random.key(seed + 100), (B, T), 0, V)
    scratch = models.make_model("scratch", V, H, impl=scratch_impl)
    concise = models.make_model("concise", V, H, impl="reference")
    flax_params = models.scratch_to_concise(params)

    logits_s, state_s = jax.jit(scratch.apply)(params, state, tokens)
    logits_c, state_c = jax.jit(concise.apply)(flax_params, state, tokens)
    assert logits_s.shape == (B, T, V)
    np.testing.assert_allclose(logits_s, logits_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state_s.h, state_c.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state_s.c, state_c.c, rtol=1e-5, atol=1e-6)

    grad = lambda m: jax.jit(jax.value_and_grad(functools.partial(loss_fn, m), has_aux=True))
    (loss_s, _), g_s = grad(scratch)(params, state, tokens, targets)
    (loss_c, _), g_c = grad(concise)(flax_params, state, tokens, targets)
    np.testing.assert_allclose(loss_s, loss_c, rtol=1e-6)
    assert float(loss_s) > 0.5  # a real loss, not a degenerate zero
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g_s, models.concise_to_scratch(g_c))


def test_final_state_is_last_hidden_output():
    params, state, tokens = random_inputs(4)
    h_BxTxH, final = lstm.lstm_sequence(params, state, tokens)
    np.testing.assert_array_equal(h_BxTxH[:, -1], final.h)


@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_bfloat16_compute_keeps_float32_params_and_logits(variant):
    model = models.make_model(variant, V, H, "bfloat16")
    params = model.init(jax.random.key(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    logits, state = model.apply(params, model.initial_state(B), jnp.zeros((B, T), jnp.int32))
    assert logits.dtype == jnp.float32 and state.h.dtype == jnp.bfloat16
    ref, _ = models.make_model(variant, V, H).apply(params, models.make_model(variant, V, H).initial_state(B),
                                                     jnp.zeros((B, T), jnp.int32))
    np.testing.assert_allclose(logits, ref, atol=2e-2)
