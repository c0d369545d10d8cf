"""Sweeps: the grid over any field, a trial = the training run, vmapped = solo, resume, shards, tables."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_CLI, one_error_line, quiet, run_cli
from lstm_jax import metrics, train
from lstm_jax import sweep as lib
from lstm_jax.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def grid(config, **axes):
    return lib.expand(lib.grid_axes(config, {lib.ALIASES.get(k, k): v for k, v in axes.items()}))


def curve(result, key="train_ppl"):
    return [p[key] for p in result["curve"]]


def test_grid_expands_any_field(tiny_config):
    c = tiny_config
    trials = grid(c, hidden=[16, 32], lr=[0.5, 1, 2], seeds=[0, 1])
    assert len(trials) == 12 and len({t.name for t in trials}) == 12
    assert [t.name for t in trials[:3]] == ["h16_lr0.5_s0", "h16_lr0.5_s1", "h16_lr1.0_s0"]
    assert grid(c) == [lib.Trial((("num_hiddens", 32), ("learning_rate", 1.0), ("seed", 0)))]
    deep = grid(c, num_layers=lib.parse_values(c, "num_layers", "1,2"),
                dropout=lib.parse_values(c, "dropout", "0,0.25"))
    assert [t.name for t in deep][:2] == ["h32_lr1.0_s0_dropout0.0_num_layers1", "h32_lr1.0_s0_dropout0.0_num_layers2"]
    cfg = lib.trial_config(c, deep[3])
    assert (cfg.num_layers, cfg.dropout, cfg.num_hiddens) == (2, 0.25, 32) and "sweep" not in cfg
    words = lib.trial_config(c, grid(c, **{"data.token": ["word"]})[0])
    assert words.data.token == "word"
    # The config's sweep section, under the command line's axes.
    import ml_collections
    c.sweep = ml_collections.ConfigDict(dict(hidden=(8, 16), learning_rate=(0.5,), seeds=(3,)))
    assert [t.name for t in lib.expand(lib.grid_axes(c))] == ["h8_lr0.5_s3", "h16_lr0.5_s3"]
    assert [t.name for t in lib.expand(lib.grid_axes(c, {"num_hiddens": [64]}))] == ["h64_lr0.5_s3"]
    with pytest.raises(UserError, match="--grid num_layer: the config has no field 'num_layer'"):
        lib.parse_values(c, "num_layer", "1")
    with pytest.raises(UserError, match="--grid num_layers: 'x' is not a int"):
        lib.parse_values(c, "num_layers", "1,x")


@pytest.mark.slow
def test_a_solo_trial_is_the_training_run(tiny_config, tmp_path):
    c = tiny_config
    c.num_epochs, c.data.val_fraction = 2, 0.1
    trial = grid(c, lr=[2.0])[0]
    out = lib.run_sweep(c, [trial], str(tmp_path / "sweep"), **quiet)
    alone = train.train_and_evaluate(lib.trial_config(c, trial), str(tmp_path / "alone"), **quiet)
    r = out["results"][0]
    assert r["final_ppl"] == alone["final_train_ppl"] and r["final_val_ppl"] == alone["final_val_ppl"]
    assert (tmp_path / "sweep" / "trials" / trial.name / "checkpoints").is_dir()  # a full training workdir


@pytest.mark.slow  # several runs
def test_trials_honour_every_field_and_share_one_program(tiny_config, tmp_path):
    # Each trial is the one training loop: a time budget and mid-epoch evaluation hold per trial.
    # Trials that differ only in learning rate or seed run one compiled program (no cache of ours).
    from lstm_jax import steps

    c = tiny_config
    c.num_epochs, c.data.val_fraction, c.eval_every_steps, c.time_budget_s = 50, 0.1, 5, 0.05
    trials = grid(c, lr=[0.5, 2.0], seeds=[0, 1])
    lib.run_solo(c, trials[0], str(tmp_path), lambda: False)  # compiles
    programs = steps.train_block._cache_size()
    results = [lib.run_solo(c, t, str(tmp_path), lambda: False) for t in trials[1:]]
    assert steps.train_block._cache_size() == programs
    for t, r in zip(trials[1:], results):
        records = metrics.read_metrics(os.path.join(lib.trial_dir(str(tmp_path), t), "metrics.jsonl"))
        assert r["status"] == "ok" and 1 < records[-1]["step"] < 50 * 22  # the budget shortened it
        assert "val_loss" in records[-1]
    assert len({r["final_ppl"] for r in results}) == 3  # lr and seed both matter


@pytest.mark.slow
def test_resume_failures_tables_and_a_shrunk_grid(tiny_config, tmp_path):
    c, out = tiny_config, str(tmp_path / "sweep")
    c.num_epochs = 2
    # hidden 0 fails config validation; lr=inf diverges; the rest finish.
    trials = grid(c, hidden=[0, 16], lr=[1.0, float("inf")])
    first = lib.run_sweep(c, trials, out, **quiet)
    assert first["ran"] == 4 and first["skipped"] == 0
    status = {r["trial"]: (r["status"], r["reason"]) for r in first["results"]}
    assert status["h16_lr1.0_s0"] == ("ok", "")
    assert status["h16_lrinf_s0"][0] == "failed" and "became nan in epoch 1" in status["h16_lrinf_s0"][1]
    assert status["h0_lr1.0_s0"] == ("failed", "config.num_hiddens must be positive, got 0")
    assert first["best"]["trial"] == "h16_lr1.0_s0"
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["trial"] for r in rows) == sorted(t.name for t in trials)
    assert {"hidden", "lr", "seed", "final_ppl", "status", "reason", "tokens_per_sec", "wall_s", "in_grid"} <= set(rows[0])
    table = json.loads((tmp_path / "sweep" / "results.json").read_text())  # strict JSON: no NaN/inf
    assert len(next(r for r in table if r["status"] == "ok")["curve"]) == 2
    for name in ("heatmap.png", "curves.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:8] == PNG
    lines = metrics.format_table(first["results"], "hidden", "lr").splitlines()
    assert lines[1].split() == ["hidden", "lr", "1", "lr", "inf"] and lines[2].split() == ["0", "failed", "failed"]

    # One more learning rate: only the new trials run; finished ones are not touched.
    before = (tmp_path / "sweep" / "trials" / "h16_lr1.0_s0" / "result.json").read_text()
    more = grid(c, hidden=[0, 16], lr=[1.0, float("inf"), 2.0])
    second = lib.run_sweep(c, more, out, **quiet)
    assert second["ran"] == 2 and second["skipped"] == 4
    assert (tmp_path / "sweep" / "trials" / "h16_lr1.0_s0" / "result.json").read_text() == before
    best_h16_lr2 = second["best"]
    # A smaller grid: the tables still cover every finished trial, marking the current grid's.
    third = lib.run_sweep(c, grid(c, hidden=[16], lr=[1.0]), out, **quiet)
    assert third["ran"] == 0 and len(third["results"]) == 6
    assert {r["trial"]: r["in_grid"] for r in third["results"]}["h16_lr2.0_s0"] is False
    assert third["best"]["trial"] == best_h16_lr2["trial"]  # not forgotten by the smaller grid
    # Failed trials are kept unless asked; a different base config is refused, naming the field.
    assert lib.run_sweep(c, more, out, **quiet)["ran"] == 0
    assert lib.run_sweep(c, more, out, retry_failed=True, **quiet)["ran"] == 4
    c.lstm_impl = "reference"  # the same function computed another way: not a different config
    assert lib.run_sweep(c, more, out, **quiet)["ran"] == 0
    c.num_epochs = 3
    with pytest.raises(UserError, match=r"different config \(num_epochs \(2 -> 3\)\)"):
        lib.run_sweep(c, more, out, **quiet)


@pytest.mark.slow
def test_shards_fill_one_directory(tiny_config, tmp_path):
    c, out = tiny_config, str(tmp_path / "sweep")
    c.num_epochs = 1
    trials = grid(c, lr=[0.5, 1.0, 2.0])
    a = lib.run_sweep(c, trials, out, shard=(0, 2), **quiet)
    assert a["ran"] == 2 and len(a["results"]) == 2  # trials 0 and 2
    b = lib.run_sweep(c, trials, out, shard=(1, 2), **quiet)
    assert b["ran"] == 1 and len(b["results"]) == 3  # and the tables cover both shards


SWEEP = ["-m", "lstm_jax.sweep", *TINY_CLI, "--config.num_epochs=2"]


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    args = [*SWEEP, "--hidden", "16,32", "--lr", "1,inf", "--grid", "num_layers=1", f"--out={out}"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("4 trials, one at a time")
    assert "4 finished trials" in first.stdout and "2 failed" in first.stdout
    command = next(line for line in first.stdout.splitlines() if line.startswith("reproduce it alone: "))
    for name in ("results.csv", "results.json", "heatmap.png", "curves.png", "best.json"):
        assert (out / name).exists(), name
    # The printed command trains the best trial alone to the same perplexity.
    argv = shlex.split(command.split(": ", 1)[1])
    alone = run_cli(*argv[1:])
    assert alone.returncode == 0, alone.stderr
    best = json.loads((out / "best.json").read_text())["best"]
    assert json.loads((out / "best" / "summary.json").read_text())["final_train_ppl"] == best["final_ppl"]
    again = run_cli(*args)
    assert again.returncode == 0 and "4 of 4 trials already finished" in again.stdout
    vmapped = run_cli(*SWEEP, "--lr", "0.5,2", "--no-vmap", f"--out={tmp_path / 'solo'}", "--dry_run")
    assert vmapped.returncode == 0 and vmapped.stdout.splitlines()[0] == "2 trials:"  # an old flag still works
    aliased = run_cli(*SWEEP, "--grid", "hidden=8,16", "--grid", "cell=lstm,gru", f"--out={tmp_path / 'a'}", "--dry_run")
    assert aliased.returncode == 0 and aliased.stdout.splitlines()[0] == "4 trials:", aliased.stderr[-500:]
    assert "--mode vmap was removed" in one_error_line(run_cli(*SWEEP, "--mode", "vmap", f"--out={tmp_path / 'v'}"))


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["--config.num_epoch=3"], "--config.num_epoch: the config has no field 'num_epoch'"),
    (["--hidden", "16,x"], "--grid num_hiddens: 'x' is not a int"),
    (["--grid", "nope=1"], "--grid nope: the config has no field 'nope'"),
    (["--shard", "2/2"], "--shard must be I/N with 0 <= I < N, got '2/2'"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expected):
    assert expected in one_error_line(run_cli(*SWEEP, f"--out={tmp_path}", *args))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_every_time(tmp_path):
    # Interrupted at different moments, five times: exit 130 with its message, never a crash;
    # then the same command finishes the sweep.
    out = tmp_path / "sweep"
    args = [sys.executable, *SWEEP, "--hidden", "16,24", "--lr", "0.5,1,2", "--config.num_epochs=30", f"--out={out}"]
    for i in range(5):
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        time.sleep(3 + 1.3 * i)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode in (130, 0), (proc.returncode, stderr[-2000:])
        assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr[-2000:]
        if proc.returncode == 130:  # stopped while starting, or after saving where it stood
            assert ("interrupted while starting" in stderr or "run the same command again to resume" in stdout), \
                (stdout[-2000:], stderr[-2000:])
    final = run_cli(*args[1:])
    assert final.returncode == 0, final.stderr
    assert len(json.loads((out / "results.json").read_text())) == 6
