"""AWD-LSTM's dropouts: what each mask holds constant, and that the model uses them as specified."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import models
from lstm_jax.regularize import Dropout, drop_embedding, drop_weights, dropout

V, H, E, B, T = 11, 8, 8, 6, 9


def test_locked_masks_are_constant_over_time_and_differ_across_sequences():
    x = jnp.ones((T, B, 32))
    m = dropout(jax.random.key(0), 1, x, 0.5, locked=True)
    np.testing.assert_array_equal(m, jnp.broadcast_to(m[:1], m.shape))  # every time step the same
    assert len({tuple(np.asarray(m[0, b])) for b in range(B)}) == B  # each sequence its own
    per_step = dropout(jax.random.key(0), 1, x, 0.5)
    assert not np.array_equal(per_step[0], per_step[1])
    assert set(np.unique(m).tolist()) == {0.0, 2.0}


def test_embedding_dropout_drops_whole_words():
    table = jax.random.normal(jax.random.key(1), (200, E))
    dropped = drop_embedding(jax.random.key(2), table, 0.3)
    zero = np.all(dropped == 0, axis=1)
    np.testing.assert_allclose(dropped[~zero], table[~zero] / 0.7, rtol=1e-6)  # kept rows scaled whole
    assert 0.15 < zero.mean() < 0.45
    assert drop_embedding(None, table, 0.3) is table


def test_weight_drop_masks_only_the_recurrent_weights_once_per_call():
    model = models.LanguageModel("scratch", V, H, num_layers=2, embed_dim=E, dropout=Dropout(weight=0.5))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    key = jax.random.key(2)
    # The model with weight drop = the model without it on weights masked once for the whole sequence.
    masked = {**drop_weights(key, models.layer(params, 0), ("W_hi", "W_hf", "W_ho", "W_hc"), 0.5, 0),
              "layer1": drop_weights(key, params["layer1"], ("W_hi", "W_hf", "W_ho", "W_hc"), 0.5, 1)}
    masked = {**params, **masked}
    for name in ("W_hi", "W_hc"):
        kept = masked[name] != 0
        assert 0.35 < float(kept.mean()) < 0.65
        np.testing.assert_allclose(masked[name][kept], 2 * params[name][kept], rtol=1e-6)
    for name in ("W_xi", "b_i", "W_hq", "embed"):
        np.testing.assert_array_equal(masked[name], params[name])
    plain = dataclasses.replace(model, dropout=0.0)
    for impl in ("fast", "reference"):
        got = dataclasses.replace(model, impl=impl).apply(params, model.initial_state(B), tokens, key)[0]
        want = dataclasses.replace(plain, impl=impl).apply(masked, model.initial_state(B), tokens, key)[0]
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # a new minibatch (key) draws a new mask; evaluation (no key) none
    other = model.apply(params, model.initial_state(B), tokens, jax.random.key(3))[0]
    assert not np.allclose(other, got)
    np.testing.assert_array_equal(model.apply(params, model.initial_state(B), tokens)[0],
                                  plain.apply(params, plain.initial_state(B), tokens)[0])


def test_each_site_gets_its_own_rate(monkeypatch):
    from lstm_jax import regularize

    seen = []
    original = regularize.dropout_mask
    monkeypatch.setattr(regularize, "dropout_mask", lambda key, site, shape, rate, dtype, locked=False: (
        seen.append((site, rate, locked)), original(key, site, shape, rate, dtype, locked))[1])
    drop = Dropout(input=0.1, hidden=0.2, output=0.3, locked=True, embed=0.4)
    model = models.LanguageModel("scratch", V, H, num_layers=3, embed_dim=E, dropout=drop, impl="reference")
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    model.apply(params, model.initial_state(B), tokens, jax.random.key(2))
    assert seen == [(1000, 0.4, False), (0, 0.1, True), (1, 0.2, True), (2, 0.2, True), (3, 0.3, True)]


@pytest.mark.parametrize("fields,message", [
    (dict(weight_drop=1.0), "config.weight_drop must be in [0, 1), got 1.0"),
    (dict(dropout_input=-0.1, embed_dim=4), "config.dropout_input must be in [0, 1), got -0.1"),
    (dict(embed_dropout=0.1), "config.embed_dropout and config.dropout_input act on an embedding: set config.embed_dim"),
    (dict(model="concise", locked_dropout=True), "config.locked_dropout=True: the concise model (flax's cells) has only"),
])
def test_dropout_fields_are_checked_with_one_line(tiny_config, fields, message):
    from lstm_jax import configs
    from lstm_jax.errors import UserError

    for k, v in fields.items():
        tiny_config[k] = v
    with pytest.raises(UserError) as e:
        configs.validate(tiny_config)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_after", "lstm_proj"])
def test_activation_regularizers_are_awds_formulas(cell):
    """AR on the last layer's dropped outputs, TAR on its outputs before dropout; the step reports the
    plain cross-entropy, and the fast path agrees with the reference (float64)."""
    import optax

    from lstm_jax import steps

    with jax.enable_x64(True):
        kw = dict(num_layers=2, embed_dim=E, cell=cell, activation_reg=2.0, temporal_reg=1.0,
                  dropout=Dropout(0.1, 0.2, 0.4, True, 0.1, 0.2), proj_size=4 if cell == "lstm_proj" else 0)
        model = models.LanguageModel("scratch", V, H, **kw)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0)))
        state = jax.tree.map(lambda a: a.astype(jnp.float64), model.initial_state(B))
        X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
        Y, key = (X + 1) % V, jax.random.key(2)
        logits, _, (h, dropped) = jax.jit(functools.partial(model.apply, outputs=True))(params, state, X, key)
        assert h.shape == dropped.shape == (T, B, 4 if cell == "lstm_proj" else H)
        assert np.any(dropped == 0) and not np.any(h == 0)
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
        want = xent + 2.0 * jnp.mean(dropped ** 2) + 1.0 * jnp.mean((h[1:] - h[:-1]) ** 2)
        got, (_, reported) = jax.jit(functools.partial(steps.objective, model))(params, state, X, Y, key)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(reported, xent, rtol=1e-12)
        grads = {impl: jax.jit(jax.grad(lambda p, m=dataclasses.replace(model, impl=impl): steps.objective(
            m, p, state, X, Y, key)[0]))(params) for impl in ("fast", "reference") if impl == "reference"
            or cell != "lstm_proj"}
        if "fast" in grads:
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), grads["fast"],
                         grads["reference"])


@pytest.mark.slow
def test_awd_lstm_as_a_whole_trains_resumes_bit_exactly_samples_and_evaluates(tiny_config, tmp_path):
    # Every AWD-LSTM feature at once: a narrower tied last layer, locked, embedding and weight dropout,
    # AR/TAR, NT-ASGD with PyTorch's L2 weight decay.
    from test_cells import lifecycle

    c = tiny_config
    c.num_hiddens, c.last_hiddens, c.embed_dim, c.tie_weights = 24, 12, 12, True
    c.locked_dropout, c.embed_dropout, c.weight_drop, c.dropout_input = True, 0.1, 0.3, 0.2
    c.activation_reg, c.temporal_reg = 2.0, 1.0
    c.optimizer, c.nonmono, c.learning_rate, c.weight_decay, c.init = "ntasgd", 1, 3.0, 1e-6, "flax"
    lifecycle(c, tmp_path)
