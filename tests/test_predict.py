"""Continuing text from a checkpoint: the generator (d2l's predict_ch8) and the predict CLI."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_CLI, one_error_line, run_cli
from lstm_jax import concise, corpora, data, models, predict
from lstm_jax.errors import UserError

VOCAB = data.load_corpus(corpora.corpus_path("timemachine")).vocab


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


@pytest.fixture(params=["scratch", "concise", "concise:fast", "scratch:reference:2"])
def model_and_params(request):
    variant, _, rest = request.param.partition(":")
    impl, _, layers = rest.partition(":")
    layers = int(layers or 1)
    model = models.LanguageModel(variant, len(VOCAB), 16, impl=impl or None, num_layers=layers)
    # Larger random weights than the init, so the continuation is not constant.
    scratch = models.LanguageModel("scratch", len(VOCAB), 16, num_layers=layers).init(jax.random.key(0))
    leaves, tree = jax.tree.flatten(scratch)
    params = jax.tree.unflatten(tree, [1.2 * jax.random.normal(jax.random.key(i), a.shape)
                                       for i, a in enumerate(leaves)])
    if variant == "concise":
        params = concise.scratch_to_concise(params)
    return model, params


@pytest.mark.parametrize("prefix", ["time traveller", "t"])
def test_greedy_scan_equals_d2l_python_loop(model_and_params, prefix):
    model, params = model_and_params
    expected = d2l_predict_ch8(model, params, VOCAB, prefix, 20)
    got = predict.continue_text(model, params, VOCAB, prefix, 20)
    assert got == expected
    assert len(set(got[len(prefix):])) > 1


def test_sampling_and_top_k(model_and_params):
    model, params = model_and_params
    key = lambda s: jax.random.key(s)
    a = predict.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, key=key(1))
    b = predict.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, key=key(1))
    c = predict.continue_text(model, params, VOCAB, "the", 40, temperature=1.0, key=key(2))
    assert a == b != c
    greedy = predict.continue_text(model, params, VOCAB, "the", 40)
    assert predict.continue_text(model, params, VOCAB, "the", 40, temperature=0.7, top_k=1) == greedy
    ids = predict.encode_prefix(VOCAB, "the")
    logits, _ = model.apply(params, model.initial_state(1), ids[None])
    top2 = set(np.argsort(np.asarray(logits[0, -1]))[-2:].tolist())
    firsts = {int(predict.generate(model, params, ids, jax.random.key(s), num_preds=1, temperature=5.0,
                                    top_k=2)[0]) for s in range(30)}
    assert firsts <= top2 and len(firsts) == 2


def test_prompts_are_normalized_like_the_training_text(model_and_params):
    model, params = model_and_params
    with pytest.raises(UserError, match="empty once normalized"):
        predict.continue_text(model, params, VOCAB, "", 5)
    # d2l's text is lower-case letters and spaces: "Time Traveller!" is read as "time traveller "
    assert predict.continue_text(model, params, VOCAB, "Time Traveller!", 5) == \
        predict.continue_text(model, params, VOCAB, "time traveller ", 5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    out = run_cli("-m", "lstm_jax.train", *TINY_CLI, f"--workdir={workdir}", "--config.model=concise",
                  "--config.num_epochs=4", "--config.log_every=4", "--config.learning_rate=4.0",
                  "--config.checkpoint_every=2", "--config.num_preds=50", "--config.data.val_fraction=0.1")
    assert out.returncode == 0, out.stderr
    return workdir, out.stdout


@pytest.mark.slow
def test_predict_cli(trained, tmp_path):
    workdir, log = trained
    printed = log.split("epoch 4: perplexity")[1].splitlines()[1:3]
    predict = lambda *a: run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", *a)
    out = predict("--prefix", "time traveller", "--prefix", "traveller", "--num_chars", "50")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [p[2:] for p in printed]  # what training printed (indented by 2)
    # Sampling: repeatable per seed, and each prefix draws from its own key.
    a = predict("--prefix", "the", "--prefix", "the", "--temperature", "1.0", "--seed", "3")
    b = predict("--prefix", "the", "--prefix", "the", "--temperature", "1.0", "--seed", "3")
    assert a.returncode == 0 and a.stdout == b.stdout
    first, second = a.stdout.splitlines()
    assert first != second
    # --top_k alone samples (temperature 1) rather than being silently ignored.
    k = predict("--prefix", "the", "--top_k", "5", "--num_chars", "40")
    assert k.returncode == 0 and k.stdout != predict("--prefix", "the", "--num_chars", "40").stdout
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints"))
    assert predict("--prefix", "the", "--step", str(steps[0])).returncode == 0
    assert predict("--prefix", "the", "--best").returncode == 0
    # The prompt is normalized like the training text: no warning for capitals.
    cap = predict("--prefix", "Time Traveller")
    assert cap.returncode == 0 and cap.stderr == "" and cap.stdout.startswith("time traveller")
    # Bad input: one line each.
    assert "empty once normalized" in one_error_line(predict("--prefix", ""))
    assert "no checkpoints in" in one_error_line(run_cli("-m", "lstm_jax.predict", f"--workdir={tmp_path}"))
    assert "no checkpoint 999" in one_error_line(predict("--step", "999"))
    assert "--temperature 0 asks for greedy" in one_error_line(predict("--top_k", "3", "--temperature", "0"))


@pytest.mark.slow
def test_predict_damaged_checkpoints(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    steps = sorted(int(p) for p in os.listdir(copy / "checkpoints"))
    latest = copy / "checkpoints" / str(steps[-1])
    for root, _, files in os.walk(latest / "state"):  # truncate the newest checkpoint's arrays
        for f in files:
            if not f.startswith("_") and not f.endswith(".txt"):
                os.truncate(os.path.join(root, f), 7)
    out = run_cli("-m", "lstm_jax.predict", f"--workdir={copy}", "--prefix", "the")
    assert out.returncode == 0, out.stderr  # falls back to the previous checkpoint, with one warning
    warning = out.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: checkpoint {latest} is unreadable")
    assert f"falling back to checkpoint {steps[-2]}" in warning[0] and "pybind11" not in warning[0]
    for step in steps[:-1]:  # with every checkpoint damaged: one clean error line
        (copy / "checkpoints" / str(step) / "meta" / "metadata").write_text("{not json")
    line = one_error_line(run_cli("-m", "lstm_jax.predict", f"--workdir={copy}", "--prefix", "the"))
    assert "is unreadable" in line and "pybind11" not in line
    (copy / "checkpoints" / str(steps[-2]) / "meta" / "metadata").write_text(json.dumps({"format_version": 99}))
    shutil.rmtree(latest)
    assert "format version 99" in one_error_line(
        run_cli("-m", "lstm_jax.predict", f"--workdir={copy}", "--prefix", "the"))
