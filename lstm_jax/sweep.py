"""Hyperparameter sweeps: a grid over any config fields, each trial the training CLI's run.

  python -m lstm_jax.sweep --config experiments/sweep_d2l.py                # the grid in the config
  python -m lstm_jax.sweep --config experiments/concise.py --hidden 64,128 --lr 0.5,1,2 --seeds 0,1
  python -m lstm_jax.sweep --config experiments/shakespeare.py --grid num_layers=1,2 --grid dropout=0,0.2
  python -m lstm_jax.sweep ... --shard 0/4      # this process's quarter; any launcher, one shared --out

A trial is the base config with the grid's fields set, trained by the one training loop into
--out/trials/<name>/, so every config field works as in a single run. Run the same command again to
resume the sweep. Outputs in --out: results.csv, results.json, heatmap.png, curves.png, best.json
(docs/sweeps.md).
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: a Ctrl-C while starting exits quietly
    from lstm_jax import cli

    cli.exit_on_interrupt_while_starting()

import dataclasses
import itertools
import json
import os
import shlex
import sys
import time
from typing import Callable, Sequence

import ml_collections

from lstm_jax import checkpoint, configs, metrics, train
from lstm_jax.errors import UserError

ALIASES = {"hidden": "num_hiddens", "lr": "learning_rate", "seeds": "seed"}
SHORT = {"num_hiddens": "hidden", "learning_rate": "lr", "seed": "seed"}  # result keys, CSV columns
COLUMNS = ("trial", "hidden", "lr", "seed", "status", "final_ppl", "final_val_ppl", "best_val_loss",
           "test_loss", "epochs", "tokens_per_sec", "train_s", "wall_s", "reason", "model", "in_grid")
# Base-config fields a resumed sweep may change: they never change a trial's result.
SAFE = configs.RESUME_SAFE - {"num_epochs", "time_budget_s", "eval_every_steps"}


@dataclasses.dataclass(frozen=True)
class Trial:
    values: tuple  # ((field, value), ...): num_hiddens, learning_rate, seed, then other grid fields

    @property
    def name(self) -> str:
        """File-name-safe and unique: ``h256_lr0.5_s0`` (lr as Python's repr), then ``_<field><value>``."""
        v = dict(self.values)
        extra = "".join(f"_{k}{v[k]!r}".replace("'", "") for k in sorted(v) if k not in SHORT)
        return f"h{v['num_hiddens']}_lr{float(v['learning_rate'])!r}_s{v['seed']}{extra}"


def parse_values(config, field: str, text: str) -> list:
    """``--grid field=a,b,c`` values, typed as the config field is."""
    field = ALIASES.get(field, field)
    try:
        current = config[field]
    except (KeyError, TypeError):
        raise UserError(f"--grid {field}: the config has no field '{field}'") from None
    kind = type(current) if current is not None else str
    if kind is tuple or isinstance(current, ml_collections.ConfigDict):
        raise UserError(f"--grid {field}: only single-valued fields can be a grid axis")
    out = []
    for v in text.split(","):
        try:
            out.append({"True": True, "False": False}[v] if kind is bool else kind(v))
        except (ValueError, KeyError):
            raise UserError(f"--grid {field}: {v!r} is not a {kind.__name__}") from None
    return out


def grid_axes(config, overrides: dict | None = None) -> dict:
    """Field -> values: ``overrides`` (the command line) win, then ``config.sweep``, then the config's value."""
    sweep = configs.flatten(configs.as_dict(config.get("sweep") or {}))
    axes = {ALIASES.get(field, field): list(values) for field, values in sweep.items() if values}
    axes.update(overrides or {})
    for field in ("num_hiddens", "learning_rate", "seed"):
        axes.setdefault(field, [config[field]])
    return axes


def expand(axes: dict) -> list[Trial]:
    """Every combination, the first axis varying slowest; duplicates dropped."""
    order = ["num_hiddens", "learning_rate", "seed"] + sorted(k for k in axes if k not in SHORT)
    combos = itertools.product(*(axes[k] for k in order))
    return list(dict.fromkeys(Trial(tuple(zip(order, c))) for c in combos))


def base_config(config) -> ml_collections.ConfigDict:
    """A resolved, unlocked copy without the ``sweep`` section."""
    c = config.copy_and_resolve_references()
    c.unlock()
    if "sweep" in c:
        del c["sweep"]
    return c


def trial_config(config, trial: Trial) -> ml_collections.ConfigDict:
    """The full config of one trial: what ``python -m lstm_jax.train`` would run."""
    c = base_config(config)
    for field, value in trial.values:
        parent, _, leaf = field.rpartition(".")
        section = c[parent] if parent else c
        section[leaf] = float(value) if isinstance(section[leaf], float) else value
    return c


def _result(trial: Trial, config, **fields) -> dict:
    grid = {SHORT.get(k, k): v for k, v in trial.values}
    return {"trial": trial.name, **grid, "model": config.model, "status": "ok", "reason": "",
            "final_ppl": None, "final_val_ppl": None, "best_val_loss": None, "test_loss": None, "epochs": 0,
            "tokens_per_sec": None, "train_s": None, "wall_s": None, "curve": [], **fields}


def run_solo(config, trial: Trial, out: str, should_stop) -> dict | None:
    """One trial as the training CLI runs it; None if it was stopped (it resumes next time)."""
    start = time.perf_counter()
    cfg = trial_config(config, trial)
    workdir = trial_dir(out, trial)
    try:
        s = train.train_and_evaluate(cfg, workdir, log=lambda m: None, progress=False, should_stop=should_stop)
    except UserError as e:
        if "is in use by another process" in str(e):
            raise
        return _result(trial, cfg, status="failed", reason=(str(e).strip().splitlines() or [""])[0])
    if s.get("interrupted"):
        return None
    curve = [{k: r[k] for k in ("epoch", "step", "train_ppl", "val_ppl", "val_loss") if k in r}
             for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    return _result(trial, cfg, final_ppl=s.get("final_train_ppl"), final_val_ppl=s.get("final_val_ppl"),
                   best_val_loss=s.get("best_val_loss"), test_loss=s.get("test_loss"), epochs=s.get("epochs"),
                   tokens_per_sec=s.get("tokens_per_sec_median"), train_s=s.get("train_s"),
                   wall_s=time.perf_counter() - start, curve=curve)


def trial_dir(out: str, trial: Trial) -> str:
    return os.path.join(out, "trials", trial.name)


def load_results(out: str) -> dict[str, dict]:
    """Every finished trial's result in ``out`` (a torn file counts as unfinished)."""
    results = {}
    root = os.path.join(out, "trials")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(os.path.join(root, name, "result.json"), encoding="utf-8") as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        if r.get("status") in ("ok", "failed"):
            r.pop("config", None)
            results[name] = r
    return results


def check_sweep_dir(out: str, config, fields: Sequence[str]) -> None:
    """Refuse to mix trials of different base configs in one directory, naming the field."""
    mine = configs.as_dict(base_config(config))
    path = os.path.join(out, "sweep_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        diffs = configs.differences(theirs, mine, ignore=SAFE | set(fields) | set(theirs.pop("_grid_fields", [])))
        if diffs:
            raise UserError(f"{out} holds a sweep of a different config ({diffs[0]}); "
                            "use another --out, or the same config to resume it")
        return
    metrics.write_atomic(path, json.dumps({**mine, "_grid_fields": list(fields)}, indent=2))


def reproduce_command(trial: Trial, config_file: str | None, overrides: Sequence[str] = (),
                      workdir: str | None = None) -> str:
    """The ``python -m lstm_jax.train`` line that trains ``trial`` alone."""
    args = ["python", "-m", "lstm_jax.train", "--config", config_file or "<config file>"]
    args += [f"--workdir={workdir}"] if workdir else []
    args += list(overrides) + [f"--config.{k}={float(v)!r}" if isinstance(v, float) else f"--config.{k}={v}"
                               for k, v in trial.values]
    return " ".join(shlex.quote(a) for a in args)


def write_outputs(out: str, config, trials: Sequence[Trial], config_file=None, overrides=()) -> dict:
    """Tables, plots and best.json over every finished trial in ``out``."""
    grid = {t.name: {SHORT.get(k, k): v for k, v in t.values} for t in trials}
    # A trial's name is its identity; strict JSON stored a non-finite value (lr=inf) as null.
    results = [{**r, **grid.get(name, {}), "in_grid": name in grid} for name, r in load_results(out).items()]
    if not results:
        return {"results": [], "best": None, "command": None}
    metrics.write_tables(out, results, COLUMNS + tuple(sorted({k for r in results for k in r} -
                                                            set(COLUMNS) - {"curve", "failed_epoch", "group_size",
                                                                            "group_tokens_per_sec", "setup_s"})))
    rows, cols = axes_to_plot(trials)
    title = f"{config.model} {config.cell}, {config.num_epochs} epochs"
    metrics.plot_heatmap(results, os.path.join(out, "heatmap.png"), rows, cols,
                           f"{title}: final {metrics.score_name(results)}")
    metrics.plot_curves(results, os.path.join(out, "curves.png"), rows, cols, title)
    best = metrics.best_trial(results)
    trial = next((t for t in trials if best and t.name == best["trial"]), None)
    command = reproduce_command(trial, config_file, overrides, os.path.join(out, "best")) if trial else None
    metrics.write_atomic(os.path.join(out, "best.json"), metrics.dumps({"best": best, "command": command}))
    return {"results": results, "best": best, "command": command}


def axes_to_plot(trials: Sequence[Trial]) -> tuple[str, str]:
    """The heatmap's rows and columns: the first two varying grid axes (hidden x lr by default)."""
    varying = [SHORT.get(k, k) for k, _ in trials[0].values
               if k != "seed" and len({dict(t.values)[k] for t in trials}) > 1] if trials else []
    rows = varying[0] if varying else "hidden"
    cols = varying[1] if len(varying) > 1 else ("lr" if rows != "lr" else "hidden")
    return rows, cols


def run_sweep(config, trials: Sequence[Trial], out: str, *, shard: tuple = (0, 1),
              retry_failed: bool = False, log: Callable[[str], None] = print, progress: bool = True,
              should_stop=lambda: False, config_file=None, overrides=()) -> dict:
    """Run this shard's unfinished trials, then write the tables of every finished trial in ``out``."""
    if not trials:
        raise UserError("the sweep has no trials")
    index, count = shard
    lock = ".lock" if count == 1 else f".lock-shard-{index}-of-{count}"
    with checkpoint.locked(out, lock, "a sweep"):
        check_sweep_dir(out, config, [k for k, _ in trials[0].values])
        done = load_results(out)
        mine = [t for i, t in enumerate(trials) if i % count == index]
        todo = [t for t in mine if t.name not in done or (retry_failed and done[t.name]["status"] == "failed")]
        if len(mine) > len(todo):
            log(f"resuming {out}: {len(mine) - len(todo)} of {len(mine)} trials already finished, {len(todo)} to run")
        bar = metrics.Progress(len(todo), 0, "trial", enabled=progress and bool(todo), log=log)
        start, stopped = time.perf_counter(), False
        for t in todo:
            try:
                r = run_solo(config, t, out, should_stop)
            except UserError as e:
                log(f"{t.name}: skipped, {e}")  # another process trains it (its workdir's lock)
                continue
            if r is None:
                stopped = True
                break
            os.makedirs(trial_dir(out, t), exist_ok=True)  # a trial refused before training has none yet
            metrics.write_atomic(os.path.join(trial_dir(out, t), "result.json"),
                                 metrics.dumps({**r, "config": configs.as_dict(trial_config(config, t))}))
            log(f"{r['trial']}: perplexity {r['final_ppl']:.2f}" if r["status"] == "ok"
                else f"{r['trial']}: FAILED: {r['reason']}")
            bar.update(1)
        bar.close()
        summary = write_outputs(out, config, trials, config_file, overrides)
    return {**summary, "ran": len(todo), "skipped": len(mine) - len(todo), "stopped": stopped,
            "elapsed_s": time.perf_counter() - start}


def main() -> None:
    from absl import flags

    from lstm_jax import cli

    flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: a grid axis over any config field (repeatable), "
                              "e.g. --grid num_layers=1,2 --grid data.token=char,word.")
    for short, field in ALIASES.items():
        flags.DEFINE_list(short, None, f"Shorthand for --grid {field}=...")
    flags.DEFINE_string("out", None, "Sweep directory (default: runs/sweep-<config file name>).")
    flags.DEFINE_string("shard", "0/1", "I/N: run trials I, I+N, I+2N, ... of the grid (N machines, one --out).")
    flags.DEFINE_boolean("retry_failed", False, "On resume, run failed trials again (default: keep them).")
    flags.DEFINE_boolean("dry_run", False, "Print the trials, then exit.")
    flags.DEFINE_enum("mode", "solo", ["auto", "solo", "vmap"], "Old command lines: trials run one at a time "
                      "(auto, solo and --no-vmap); vmap was removed in 0.3 (docs/sweeps.md).")
    flags.DEFINE_boolean("report", False, "Write the tables and plots from what has finished; train nothing.")
    F = flags.FLAGS

    def run(config, config_file):
        if F.mode == "vmap":
            raise UserError("--mode vmap was removed in 0.3: it trained outside the one training loop and "
                            "ignored time_budget_s, eval_every_steps, the test split and checkpoints")
        stem = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
        out = F.out or os.path.join("runs", f"sweep-{stem}")
        try:
            given = dict(g.split("=", 1) if "=" in g else (g, "") for g in F.grid)
            given.update({ALIASES[s]: ",".join(F[s].value) for s in ALIASES if F[s].value})
            trials = expand(grid_axes(config, {ALIASES.get(f, f): parse_values(config, f, v) for f, v in given.items()}))
            index, count = (int(x) for x in F.shard.split("/"))
            if not 0 <= index < count:
                raise ValueError
        except ValueError:
            raise UserError(f"--shard must be I/N with 0 <= I < N, got {F.shard!r}") from None
        if F.dry_run:
            print(f"{len(trials)} trials:\n" + "\n".join(f"  {t.name}" for t in trials))
            return
        overrides = [a for a in sys.argv[1:] if a.startswith("--config.") and not a.startswith("--config.sweep.")
                     and a.split("=")[0][len("--config."):] not in {k for k, _ in trials[0].values}]
        if F.report:
            summary = {**write_outputs(out, config, trials, config_file, overrides), "ran": 0, "skipped": 0,
                       "elapsed_s": 0.0, "stopped": False}
        else:
            print(f"{len(trials)} trials, one at a time, shard {index}/{count}, out {out}")
            summary = run_sweep(config, trials, out, shard=(index, count), log=cli.log, retry_failed=F.retry_failed,
                                should_stop=cli.STOP, config_file=config_file, overrides=overrides)
        if summary["stopped"]:
            print(f"stopped: {summary['ran']} trials were left to run; run the same command again to resume")
            return True
        results, best = summary["results"], summary["best"]
        print(f"\n{len(results)} finished trials in {out} ({summary['ran']} trained now in "
              f"{summary['elapsed_s']:.1f} s, {summary['skipped']} already finished), "
              f"{sum(r['status'] != 'ok' for r in results)} failed")
        if results:
            print(metrics.format_table(results, *axes_to_plot(trials)))
        if best is None:
            print("no trial finished: every trial failed (see results.csv, column 'reason')")
        else:
            val = f", held-out {best['final_val_ppl']:.2f}" if best.get("final_val_ppl") is not None else ""
            print(f"best: {best['trial']}: perplexity {best['final_ppl']:.2f}{val}")
            if summary["command"]:
                print(f"reproduce it alone: {summary['command']}")
        print(f"outputs in {out}: results.csv, results.json, heatmap.png, curves.png, best.json")

    sys.argv = [{"--no-vmap": "--mode=solo", "--novmap": "--mode=solo"}.get(a, a) for a in sys.argv]
    cli.run(run, __doc__, takes_config=True, stoppable=True)


if __name__ == "__main__":
    main()
