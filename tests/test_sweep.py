"""Sweeps: the grid, vmapped == solo, failures, resume, tables, plots, the CLI.

Sizes are tiny (hidden 16-32, batch 8, 10 steps, 2000 tokens, 2-3 epochs)
so the file runs in well under a minute on 2 CPU cores.
"""

import csv
import json
import shlex

import numpy as np
import pytest

from conftest import run_cli
from lstm_jax import sweep, train
from lstm_jax.errors import UserError
from lstm_jax.reporting import read_metrics
from lstm_jax.sweep import Trial

quiet = dict(log=lambda m: None, progress=False)
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--config.batch_size=8", "--config.num_steps=10", "--config.data.max_tokens=2000",
        "--config.num_epochs=2", "--config.log_every=100", "--config.num_preds=5"]


def curve(result, key="train_ppl"):
    return [p[key] for p in result["curve"]]


def test_grid_expands_as_asked(tiny_config):
    trials = sweep.expand_grid([16, 32], [0.5, 1, 2], [0, 1])
    assert len(trials) == 12
    assert trials[:3] == [Trial(16, 0.5, 0), Trial(16, 0.5, 1), Trial(16, 1.0, 0)]
    assert {(t.hidden, t.lr, t.seed) for t in trials} == {
        (h, lr, s) for h in (16, 32) for lr in (0.5, 1.0, 2.0) for s in (0, 1)}
    assert len({t.name for t in trials}) == 12 and trials[2].name == "h16_lr1.0_s0"
    assert sweep.expand_grid([16, 16], [1], [0]) == [Trial(16, 1.0, 0)]  # duplicates once

    # Explicit lists win over config.sweep, which wins over the config's own values.
    c = tiny_config
    assert sweep.grid_from_config(c) == [Trial(32, 1.0, 0)]
    import ml_collections
    c.sweep = ml_collections.ConfigDict(dict(hidden=(8, 16), learning_rate=(0.5,), seeds=(3,)))
    assert sweep.grid_from_config(c) == [Trial(8, 0.5, 3), Trial(16, 0.5, 3)]
    assert sweep.grid_from_config(c, hidden=[64], seeds=[0, 1]) == [Trial(64, 0.5, 0), Trial(64, 0.5, 1)]
    cfg = sweep.trial_config(c, Trial(64, 2.0, 5))
    assert (cfg.num_hiddens, cfg.learning_rate, cfg.seed) == (64, 2.0, 5) and "sweep" not in cfg

    # One vmapped unit per hidden size; --group_size and --jobs split them; --no-vmap: one each.
    units = sweep.plan_units(trials)
    assert [len(u) for u in units] == [6, 6] and {t.hidden for t in units[0]} == {16}
    assert [len(u) for u in sweep.plan_units(trials, group_size=4)] == [4, 2, 4, 2]
    assert [len(u) for u in sweep.plan_units(trials, jobs=4)] == [3, 3, 3, 3]
    assert sweep.plan_units(trials, vmap=False) == [[t] for t in trials]


@pytest.mark.parametrize("variant,random_iter", [("scratch", False), ("concise", True)])
def test_vmapped_trial_is_the_solo_run(tiny_config, tmp_path, variant, random_iter):
    # Trial k of a vmapped group is the same computation as its config trained
    # alone by `python -m lstm_jax.train` (train_and_evaluate): same initial
    # weights (seed), same minibatches (seed), same lr (from opt_state).
    c = tiny_config
    c.model, c.data.random_iter, c.data.num_val = variant, random_iter, 300
    trials = [Trial(24, 0.5, 0), Trial(24, 2.0, 0), Trial(24, 2.0, 1)]
    group = sweep.train_group(c, trials)
    assert [r["mode"] for r in group] == ["vmap"] * 3 and all(r["status"] == "ok" for r in group)
    # Trials 0 and 2 differ in both lr and seed: each against `python -m lstm_jax.train`'s loop.
    for trial, r in [(trials[0], group[0]), (trials[2], group[2])]:
        alone = train.train_and_evaluate(sweep.trial_config(c, trial), str(tmp_path / trial.name), **quiet)
        metrics = read_metrics(str(tmp_path / trial.name / "metrics.jsonl"))
        np.testing.assert_allclose(curve(r), [m["train_ppl"] for m in metrics], rtol=1e-6, atol=0)
        np.testing.assert_allclose(curve(r, "val_ppl"), [m["val_ppl"] for m in metrics], rtol=1e-6, atol=0)
        assert r["final_ppl"] == pytest.approx(alone["final_train_ppl"], rel=1e-6)
    # The trials really differ (lr and seed both matter), so the comparison means something.
    assert len({round(r["final_ppl"], 6) for r in group}) == 3
    # --no-vmap (train.compile_steps/train_epoch; one compiled program reused across the
    # trials of a shape, lr read from opt_state) gives the same curves too.
    for trial, r in zip(trials, group):
        np.testing.assert_allclose(curve(sweep.train_solo(c, trial)), curve(r), rtol=1e-6, atol=0)


def test_a_diverging_trial_fails_alone(tiny_config):
    # lr=inf turns every weight into inf/nan at the first update; its group mates train on.
    trials = [Trial(16, 2.0, 0), Trial(16, float("inf"), 0), Trial(16, 0.5, 1)]
    group = sweep.train_group(tiny_config, trials)
    bad = group[1]
    assert bad["status"] == "failed" and bad["failed_epoch"] == 1 and bad["final_ppl"] is None
    assert "loss became nan in epoch 1" in bad["reason"] and "learning_rate=inf" in bad["reason"]
    for trial, r in zip(trials[::2], group[::2]):
        assert r["status"] == "ok" and r["epochs"] == 3
        np.testing.assert_allclose(curve(r), curve(sweep.train_solo(tiny_config, trial)), rtol=1e-6)


def test_sweep_resumes_records_failures_and_writes_outputs(tiny_config, tmp_path):
    c, out = tiny_config, str(tmp_path / "sweep")
    c.num_epochs = 2
    # hidden 0 fails (config validation) for its whole group; lr=inf diverges; the rest finish.
    trials = sweep.expand_grid([0, 16], [1.0, float("inf")], [0])
    first = sweep.run_sweep(c, trials, out, **quiet)
    assert first["ran"] == 4 and first["skipped"] == 0
    status = {r["trial"]: (r["status"], r["reason"]) for r in first["results"]}
    assert status["h16_lr1.0_s0"] == ("ok", "")
    assert status["h16_lrinf_s0"][0] == "failed" and "became nan in epoch 1" in status["h16_lrinf_s0"][1]
    assert status["h0_lr1.0_s0"][0] == "failed" and "num_hiddens must be positive" in status["h0_lr1.0_s0"][1]
    assert first["best"]["trial"] == "h16_lr1.0_s0"

    # One row per trial in both tables, with the promised fields.
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [t.name for t in trials]
    assert {"hidden", "lr", "seed", "final_ppl", "status", "reason", "tokens_per_sec", "wall_s"} <= set(rows[0])
    ok = next(r for r in rows if r["status"] == "ok")
    assert float(ok["final_ppl"]) > 1 and float(ok["tokens_per_sec"]) > 0 and float(ok["wall_s"]) > 0
    table = json.loads((tmp_path / "sweep" / "results.json").read_text())  # strict JSON: no NaN/inf
    assert [r["trial"] for r in table] == [t.name for t in trials]
    assert len(next(r for r in table if r["status"] == "ok")["curve"]) == 2
    for name in ("heatmap.png", "curves.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:8] == PNG
    table_lines = sweep.format_table(first["results"]).splitlines()
    assert table_lines[1].split() == ["hidden", "lr", "1", "lr", "inf"]
    assert table_lines[2].split() == ["0", "failed", "failed"]
    h16 = table_lines[3].split()
    assert h16[0] == "16" and float(h16[1]) == pytest.approx(first["best"]["final_ppl"], abs=0.01)

    # Again, with one more learning rate: only the new trials run.
    before = (tmp_path / "sweep" / "trials" / "h16_lr1.0_s0" / "result.json").read_text()
    more = sweep.expand_grid([0, 16], [1.0, float("inf"), 2.0], [0])
    second = sweep.run_sweep(c, more, out, **quiet)
    assert second["ran"] == 2 and second["skipped"] == 4
    assert (tmp_path / "sweep" / "trials" / "h16_lr1.0_s0" / "result.json").read_text() == before
    assert [r["status"] for r in second["results"]] == ["failed"] * 3 + ["ok", "failed", "ok"]
    assert len(json.loads((tmp_path / "sweep" / "results.json").read_text())) == 6

    # Failed trials are kept unless asked to retry; a different base config is refused.
    assert sweep.run_sweep(c, more, out, **quiet)["ran"] == 0
    assert sweep.run_sweep(c, more, out, retry_failed=True, **quiet)["ran"] == 4
    c.lstm_impl = "reference"  # the same function computed another way: not a different config
    assert sweep.run_sweep(c, more, out, **quiet)["ran"] == 0
    c.num_epochs = 3
    with pytest.raises(UserError, match=r"different config \(config.num_epochs was 2, now 3\)"):
        sweep.run_sweep(c, more, out, **quiet)


def test_cli_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    args = ["scripts/sweep.py", "--config", "experiments/scratch.py", "--hidden", "16,32",
            "--lr", "1,inf", "--seeds", "0,1", f"--out={out}", *TINY]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "training 8 trials in 2 vmapped groups" in first.stdout
    assert "8 trials (8 trained now" in first.stdout and "4 failed" in first.stdout
    lines = first.stdout.splitlines()
    best = next(line for line in lines if line.startswith("best: "))
    command = next(line for line in lines if line.startswith("reproduce it alone: "))
    assert command.split(": ", 1)[1].startswith("python -m lstm_jax.train --config experiments/scratch.py")
    for name in ("results.csv", "results.json", "heatmap.png", "curves.png", "best.json"):
        assert (out / name).exists(), name
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok", "failed"}

    # The printed command trains the best trial alone to the same perplexity.
    argv = shlex.split(command.split(": ", 1)[1])
    alone = run_cli(*argv[1:], "--config.log_every=100")
    assert alone.returncode == 0, alone.stderr
    summary = json.loads((out / "best" / "summary.json").read_text())
    best_row = json.loads((out / "best.json").read_text())["best"]
    assert best_row["trial"] in best
    assert summary["final_train_ppl"] == pytest.approx(best_row["final_ppl"], rel=1e-6)

    # Rerun: nothing left to train.
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "8 of 8 trials already finished" in again.stdout and "0 trained now" in again.stdout


def test_cli_one_by_one_in_two_processes(tmp_path):
    out = tmp_path / "sweep"
    res = run_cli("scripts/sweep.py", "--config", "experiments/scratch.py", "--hidden", "16",
                  "--lr", "0.5,2", "--no-vmap", "--jobs", "2", f"--out={out}", *TINY)
    assert res.returncode == 0, res.stderr
    assert "training 2 trials one by one in 2 processes" in res.stdout
    rows = json.loads((out / "results.json").read_text())
    assert [(r["mode"], r["status"]) for r in rows] == [("solo", "ok")] * 2


@pytest.mark.parametrize("args,expected", [
    (["--config.num_epoch=3"], "--config.num_epoch: the config has no field 'num_epoch'"),
    (["--hidden", "16,x"], "--hidden: 'x' is not an integer"),
    (["--lr", "0"], "--lr: values must be positive"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expected):
    res = run_cli("scripts/sweep.py", "--config", "experiments/scratch.py", f"--out={tmp_path}", *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr


def test_cli_sweep_config_file_and_dry_run():
    res = run_cli("scripts/sweep.py", "--config", "experiments/sweep_d2l.py:scratch", "--seeds", "0,1",
                  "--config.sweep.hidden=(64,128)", "--dry_run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "20 trials in 2 vmapped groups:"
    assert "h64_lr0.25_s0 h64_lr0.25_s1 h64_lr0.5_s0" in res.stdout
