import json

import jax
import numpy as np
import pytest

from conftest import run_cli
from lstm_jax import train
from lstm_jax.errors import UserError
from lstm_jax.reporting import read_metrics

quiet = dict(log=lambda m: None, progress=False)


@pytest.mark.parametrize("variant,bound", [("scratch", 16.5), ("concise", 12.0)])
def test_a_few_epochs_learn_the_book(tiny_config, tmp_path, variant, bound):
    # Uniform guessing is perplexity 28 and letter frequencies alone about 17:
    # getting below that means the model uses context.
    c = tiny_config
    c.model, c.learning_rate, c.num_epochs = variant, 4.0, 6
    summary = train.train_and_evaluate(c, str(tmp_path), **quiet)
    ppl = [r["train_ppl"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))]
    assert len(ppl) == 6
    assert ppl[0] < 28
    assert ppl[-1] < bound and ppl[-1] < 0.85 * ppl[0], ppl
    assert summary["final_train_ppl"] == ppl[-1]
    assert summary["compile_s"] > 0 and summary["tokens_per_sec_median"] > 0


def test_run_is_a_function_of_config_and_seed(tiny_config, tmp_path):
    a = train.train_and_evaluate(tiny_config, str(tmp_path / "a"), **quiet)
    b = train.train_and_evaluate(tiny_config, str(tmp_path / "b"), **quiet)
    tiny_config.seed = 1
    c = train.train_and_evaluate(tiny_config, str(tmp_path / "c"), **quiet)
    jax.tree.map(np.testing.assert_array_equal, a["train_state"].params, b["train_state"].params)
    assert a["final_train_ppl"] == b["final_train_ppl"] != c["final_train_ppl"]


def test_block_size_does_not_change_the_result(tiny_config, tmp_path):
    # An epoch cut into several compiled calls is the same computation.
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "a"), **quiet)
    tiny_config.batches_per_call = 7  # 24 minibatches -> 7, 7, 7, 3
    cut = train.train_and_evaluate(tiny_config, str(tmp_path / "b"), **quiet)
    assert whole["final_train_ppl"] == pytest.approx(cut["final_train_ppl"], rel=1e-6)


@pytest.mark.parametrize("random_iter", [False, True])
def test_partitionings_and_heldout_perplexity(tiny_config, tmp_path, random_iter):
    tiny_config.data.random_iter = random_iter
    tiny_config.data.num_val = 500
    train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert all(1 < r["val_ppl"] < 40 for r in records)
    assert records[-1]["val_ppl"] < records[0]["val_ppl"]


def test_nan_loss_stops_with_a_clear_error(tiny_config, tmp_path):
    tiny_config.learning_rate = float("inf")  # the first update makes every weight inf or nan
    tiny_config.num_epochs = 5
    with pytest.raises(UserError, match=r"loss became (nan|inf) in epoch \d"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)


def test_cli_end_to_end(tmp_path):
    out = run_cli("-m", "lstm_jax.train", "--config", "experiments/scratch.py",
                  f"--workdir={tmp_path}", "--config.num_epochs=2", "--config.log_every=1",
                  "--config.num_hiddens=64")
    assert out.returncode == 0, out.stderr
    platform = jax.default_backend()  # cpu here; gpu under scripts/gpu_check.sh
    assert f"devices: {platform}" in out.stdout
    assert "epoch 2: perplexity" in out.stdout and f"tokens/sec on {platform}" in out.stdout
    assert out.stdout.count("time traveller") >= 3
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"epoch", "train_ppl", "tokens_per_sec"} <= set(records[0])
    assert (tmp_path / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["num_hiddens"] == 64
    assert len(json.loads((tmp_path / "vocab.json").read_text())["idx_to_token"]) == 28


@pytest.mark.parametrize("args,expected", [
    (["--config.num_epoch=3"], "--config.num_epoch: the config has no field 'num_epoch'"),
    (["--config.data.pth=x"], "--config.data.pth: the config has no field 'data.pth'"),
    (["--config.num_epochs=2.5"], "--config.num_epochs=2.5"),
    (["--config.data.path=/does/not/exist.txt"], "/does/not/exist.txt does not exist"),
    (["--config.model=gru"], "config.model must be"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expected):
    out = run_cli("-m", "lstm_jax.train", "--config", "experiments/scratch.py",
                  f"--workdir={tmp_path}", *args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expected in lines[0]
    assert "Traceback" not in out.stderr


def test_cli_missing_config_file(tmp_path):
    out = run_cli("-m", "lstm_jax.train", "--config", "experiments/nope.py", f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert out.stderr.strip().startswith("error: cannot load config file experiments/nope.py")
