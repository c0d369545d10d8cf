import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import data, generate, models
from lstm_jax.errors import UserError

VOCAB = data.load_corpus(data.builtin_corpus_path()).vocab


def d2l_predict_ch8(model, params, vocab, prefix, num_preds):
    """d2l 0.x ``predict_ch8`` line by line: one Python step per character."""
    state = model.initial_state(1)
    outputs = [vocab.ids([prefix[0]])[0]]
    get_input = lambda: jnp.array([outputs[-1]]).reshape(1, 1)
    for y in prefix[1:]:
        _, state = model.apply(params, state, get_input())
        outputs.append(vocab.ids([y])[0])
    for _ in range(num_preds):
        y, state = model.apply(params, state, get_input())
        outputs.append(int(y[0, -1].argmax()))
    return "".join(vocab.to_tokens(outputs))


@pytest.fixture(params=["scratch", "concise", "concise:reference"])
def model_and_params(request):
    variant, _, impl = request.param.partition(":")
    model = models.make_model(variant, len(VOCAB), 16, impl=impl or "fast")
    # Larger random weights than the init, so the continuation is not constant;
    # the same weights for both variants.
    scratch = models.make_model("scratch", len(VOCAB), 16).init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), len(scratch))
    params = {n: 1.2 * jax.random.normal(k, a.shape) for k, (n, a) in zip(keys, scratch.items())}
    if variant == "concise":
        params = models.scratch_to_concise(params)
    return model, params


@pytest.mark.parametrize("prefix", ["time traveller", "t", "xy"])
def test_greedy_scan_equals_d2l_python_loop(model_and_params, prefix):
    model, params = model_and_params
    expected = d2l_predict_ch8(model, params, VOCAB, prefix, 20)
    got = generate.continue_text(model, params, VOCAB, prefix, 20)
    assert got == expected
    assert len(set(got[len(prefix):])) > 1


def test_sampling(model_and_params):
    model, params = model_and_params
    a = generate.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, seed=1)
    b = generate.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, seed=1)
    c = generate.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, seed=2)
    assert a == b != c
    greedy = generate.continue_text(model, params, VOCAB, "the", 40)
    assert generate.continue_text(model, params, VOCAB, "the", 40, temperature=0.7, top_k=1) == greedy


def test_top_k_restricts_the_choice(model_and_params):
    model, params = model_and_params
    ids = generate.encode_prefix(VOCAB, "the")
    logits, _ = model.apply(params, model.initial_state(1), ids[None])
    top2 = set(np.argsort(np.asarray(logits[0, -1]))[-2:].tolist())
    firsts = {int(generate.generate(model, params, ids, jax.random.key(s), num_preds=1,
                                   temperature=5.0, top_k=2)[0]) for s in range(30)}
    assert firsts <= top2 and len(firsts) == 2


def test_prefix_errors(model_and_params):
    model, params = model_and_params
    with pytest.raises(UserError, match="empty"):
        generate.continue_text(model, params, VOCAB, "", 5)
    with pytest.warns(UserWarning, match=r"lacks \['T', '!'\]"):
        out = generate.continue_text(model, params, VOCAB, "The end!", 5)
    assert out.startswith("The end!") and len(out) == len("The end!") + 5
