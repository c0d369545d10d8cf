"""Scoring a checkpoint on its splits or on a new file: python -m lstm_jax.evaluate."""

import math

import pytest

from conftest import one_error_line, quiet, run_cli
from lstm_jax import evaluate, train
from lstm_jax.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import tiny

    c = tiny()
    c.data.max_tokens, c.data.val_fraction, c.data.test_fraction = 3000, 0.1, 0.1
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train.train_and_evaluate(c, str(workdir), **quiet)


def test_splits_score_as_training_scored_them(run):
    workdir, summary = run
    val = evaluate.evaluate(str(workdir), "val")  # the best checkpoint by default
    assert val["eval_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-6)
    test = evaluate.evaluate(str(workdir), "test")
    assert test["eval_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert test["eval_bpc"] == pytest.approx(test["eval_loss"] / math.log(2)) and test["num_tokens"] == 300


def test_a_new_file_counts_unknown_tokens(run, tmp_path):
    workdir, _ = run
    text = tmp_path / "new.txt"
    text.write_text("The Time Traveller (for so it will be convenient to speak of him)\n" * 5)
    r = evaluate.evaluate(str(workdir), path=str(text))
    assert 1 < r["eval_ppl"] < 40 and r["unknown_tokens"] == 0  # d2l's text: letters and spaces only
    alien = tmp_path / "alien.txt"
    alien.write_text("12345 67890 !!!\n")
    with pytest.raises(UserError, match="has 0 tokens once read like the training text"):
        evaluate.evaluate(str(workdir), path=str(alien))
    (tmp_path / "train.txt").write_text("a directory of splits is not one file\n")
    with pytest.raises(UserError, match="is a directory; give one text file"):
        evaluate.evaluate(str(workdir), path=str(tmp_path))


@pytest.mark.slow
def test_cli(run, tmp_path):
    workdir, summary = run
    out = run_cli("-m", "lstm_jax.evaluate", f"--workdir={workdir}", "--split", "test")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the test split of ") and f"{summary['test_loss']:.4f} nats/token" in out.stdout
    assert "no checkpoints in" in one_error_line(run_cli("-m", "lstm_jax.evaluate", f"--workdir={tmp_path}"))
    missing = one_error_line(run_cli("-m", "lstm_jax.evaluate", f"--workdir={workdir}", "--path", "/nope.txt"))
    assert "/nope.txt does not exist" in missing
