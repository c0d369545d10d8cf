"""A sweep's trials: the grid over any config fields, running them, their results on disk.

A *trial* is the base config with the grid's fields set. One at a time
(:func:`run_solo`) a trial IS the training CLI's run: ``train.train_and_evaluate``
into ``<out>/trials/<name>/``, which therefore resumes mid-trial too. Trials that
differ only in learning rate and seed can train as one program
(:func:`run_group`): ``jax.vmap`` of ``steps.train_block`` over their train
states, states and minibatches; evaluated once per epoch, restarted (not
resumed) if stopped. :func:`run_sweep` runs a shard's unfinished trials and
writes the tables of every finished trial in ``out`` (``in_grid`` marks this
run's grid). The command line is :mod:`lstm_jax.sweep`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shlex
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstm_jax import configs, reporting, steps, train
from lstm_jax import workdir as workdir_lib
from lstm_jax.errors import UserError
from lstm_jax.experiment import Experiment

ALIASES = {"hidden": "num_hiddens", "lr": "learning_rate", "seeds": "seed"}
SHORT = {"num_hiddens": "hidden", "learning_rate": "lr", "seed": "seed"}  # result keys, CSV columns
COLUMNS = ("trial", "hidden", "lr", "seed", "status", "final_ppl", "final_val_ppl", "best_val_loss",
           "test_loss", "epochs", "tokens_per_sec", "train_s", "wall_s", "mode", "reason", "model", "in_grid")
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


def _get(config, field: str):
    for key in field.split("."):
        config = config[key]
    return config


def parse_values(config, field: str, text: str) -> list:
    """``--grid field=a,b,c`` values, typed as the config field is."""
    field = ALIASES.get(field, field)
    try:
        current = _get(config, field)
    except (KeyError, AttributeError):
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
    axes = {}
    sweep = config.get("sweep") or ml_collections.ConfigDict()

    def walk(section, prefix=""):
        for key, value in section.items():
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
            elif value:
                axes[ALIASES.get(prefix + key, prefix + key)] = list(value)
    walk(sweep)
    axes.update(overrides or {})
    for field in ("num_hiddens", "learning_rate", "seed"):
        axes.setdefault(field, [_get(config, field)])
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
        *parents, leaf = field.split(".")
        section = functools.reduce(lambda s, k: s[k], parents, c)
        section[leaf] = float(value) if isinstance(section[leaf], float) else value
    return c


def _result(trial: Trial, config, mode: str, **fields) -> dict:
    grid = {SHORT.get(k, k): v for k, v in trial.values}
    return {"trial": trial.name, **grid, "model": config.model, "mode": mode, "status": "ok", "reason": "",
            "final_ppl": None, "final_val_ppl": None, "best_val_loss": None, "test_loss": None, "epochs": 0,
            "tokens_per_sec": None, "train_s": None, "wall_s": None, "curve": [], **fields}


def _failed(trial, config, mode, error: BaseException) -> dict:
    text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    return _result(trial, config, mode, status="failed", reason=(text.strip().splitlines() or [""])[0])


def _curve(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("epoch", "step", "train_ppl", "val_ppl", "val_loss") if k in r} for r in records]


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
        return _failed(trial, cfg, "solo", e)
    if s.get("interrupted"):
        return None
    records = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return _result(trial, cfg, "solo", final_ppl=s.get("final_train_ppl"), final_val_ppl=s.get("final_val_ppl"),
                   best_val_loss=s.get("best_val_loss"), test_loss=s.get("test_loss"), epochs=s.get("epochs"),
                   tokens_per_sec=s.get("tokens_per_sec_median"), train_s=s.get("train_s"),
                   wall_s=time.perf_counter() - start, curve=_curve(records))


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _group_block(model, optimizer, random_iter, active, ts, state, X, Y, n, key):
    """``steps.train_block`` for one trial; a trial that is no longer ``active`` stays as it was."""
    new_ts, new_state, metrics = steps.train_block(model, optimizer, random_iter, ts, state, X, Y, n, key)
    keep = functools.partial(jnp.where, active)
    return jax.tree.map(keep, new_ts, ts), jax.tree.map(keep, new_state, state), metrics


def run_group(config, trials: Sequence[Trial], should_stop) -> list[dict] | None:
    """Trials that differ only in learning rate and seed, as one vmapped program, epoch by epoch."""
    start = time.perf_counter()
    cfgs = [trial_config(config, t) for t in trials]
    exp = Experiment.from_config(cfgs[0])  # data, model and program: the same for all
    c, K, N = exp.config, len(trials), exp.block_length
    for cfg in cfgs:
        configs.validate(cfg)
    total = c.num_epochs * exp.batches_per_epoch
    ts = _stack([steps.init_train_state(exp.model, steps.make_optimizer(cfg, total), jax.random.key(cfg.seed))
                 for cfg in cfgs])  # each trial's own initial weights and learning rate
    keys = _stack([jax.random.fold_in(jax.random.key(cfg.seed), 1) for cfg in cfgs])
    fn = jax.jit(jax.vmap(functools.partial(_group_block, exp.model, exp.optimizer, c.data.random_iter),
                          in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(1, 2))
    evaluate = jax.jit(jax.vmap(functools.partial(steps.eval_loss_sum, exp.model), in_axes=(0, None, None, None)))
    active, records, reasons = np.ones(K, bool), [[] for _ in trials], [""] * K
    seconds, tokens = 0.0, 0
    for epoch in range(c.num_epochs):
        batches = [exp.epoch_batches(epoch, cfg.seed) for cfg in cfgs]
        state = _stack([exp.model.initial_state(c.batch_size)] * K)
        losses, norms, t0 = [], [], time.perf_counter()
        for i in range(0, exp.batches_per_epoch, N):
            n = min(N, exp.batches_per_epoch - i)
            blocks = [b.block(i, n) for b in batches]
            pad = lambda a: np.pad(a, ((0, N - n), (0, 0), (0, 0)))
            X, Y = np.stack([pad(b.X) for b in blocks]), np.stack([pad(b.Y) for b in blocks])
            ts, state, m = fn(jnp.asarray(active), ts, state, X, Y, np.int32(n), keys)
            losses.append(np.asarray(m["loss"])[:, :n])
            norms.append(np.asarray(m["grad_norm"])[:, :n])
        seconds += time.perf_counter() - t0
        tokens += exp.batches_per_epoch * c.batch_size * c.num_steps
        losses, norms = np.concatenate(losses, 1), np.concatenate(norms, 1)
        val = exp.heldout.get("val")
        sums = np.asarray(evaluate(ts.params, val.X, val.Y, val.mask)) if val is not None else None
        for k in np.flatnonzero(active):
            reasons[k] = steps.check_finite(losses[k], epoch, cfgs[k]) or ""
            if reasons[k]:
                active[k] = False
                continue
            rec = steps.train_record(epoch, (epoch + 1) * exp.batches_per_epoch, seconds, losses[k], norms[k],
                                     tokens, seconds)
            records[k].append({**rec, **(steps.scores(sums[k], val.num_tokens, "val") if val else {})})
        if not active.any() or should_stop():
            break
    if should_stop():
        return None
    wall = time.perf_counter() - start
    out = []
    for k, (trial, cfg) in enumerate(zip(trials, cfgs)):
        last = records[k][-1] if records[k] else {}
        vals = [r["val_loss"] for r in records[k] if "val_loss" in r]
        out.append(_result(trial, cfg, "vmap", status="failed" if reasons[k] else "ok", reason=reasons[k],
                           final_ppl=None if reasons[k] else last.get("train_ppl"),
                           final_val_ppl=None if reasons[k] else last.get("val_ppl"),
                           best_val_loss=min(vals) if vals else None, epochs=len(records[k]),
                           tokens_per_sec=tokens / seconds if seconds else None, train_s=seconds, wall_s=wall,
                           curve=_curve(records[k])))
    return out


def trial_dir(out: str, trial: Trial | str) -> str:
    return os.path.join(out, "trials", trial if isinstance(trial, str) else trial.name)


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
    reporting.write_atomic(path, json.dumps({**mine, "_grid_fields": list(fields)}, indent=2))


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
    reporting.write_tables(out, results, COLUMNS + tuple(sorted({k for r in results for k in r} -
                                                            set(COLUMNS) - {"curve", "failed_epoch", "group_size",
                                                                            "group_tokens_per_sec", "setup_s"})))
    rows, cols = axes_to_plot(trials)
    title = f"{config.model} LSTM, {config.num_epochs} epochs"
    reporting.plot_heatmap(results, os.path.join(out, "heatmap.png"), rows, cols,
                           f"{title}: final {reporting.score_name(results)}")
    reporting.plot_curves(results, os.path.join(out, "curves.png"), rows, cols, title)
    best = reporting.best_trial(results)
    command = None
    if best is not None:
        trial = next((t for t in trials if t.name == best["trial"]), None)
        command = reproduce_command(trial, config_file, overrides, os.path.join(out, "best")) if trial else None
    reporting.write_atomic(os.path.join(out, "best.json"), reporting.dumps({"best": best, "command": command}))
    return {"results": results, "best": best, "command": command}


def axes_to_plot(trials: Sequence[Trial]) -> tuple[str, str]:
    """The heatmap's rows and columns: the first two varying grid axes (hidden x lr by default)."""
    varying = [SHORT.get(k, k) for k, _ in trials[0].values
               if k != "seed" and len({dict(t.values)[k] for t in trials}) > 1] if trials else []
    rows = varying[0] if varying else "hidden"
    cols = varying[1] if len(varying) > 1 else ("lr" if rows != "lr" else "hidden")
    return rows, cols


def run_sweep(config, trials: Sequence[Trial], out: str, *, mode: str = "solo", shard: tuple = (0, 1),
              retry_failed: bool = False, log: Callable[[str], None] = print, progress: bool = True,
              should_stop=lambda: False, config_file=None, overrides=()) -> dict:
    """Run this shard's unfinished trials, then write the tables of every finished trial in ``out``."""
    if not trials:
        raise UserError("the sweep has no trials")
    index, count = shard
    lock = ".lock" if count == 1 else f".lock-shard-{index}-of-{count}"
    with workdir_lib.Lock(out, lock, "a sweep"):
        check_sweep_dir(out, config, [k for k, _ in trials[0].values])
        done = load_results(out)
        mine = [t for i, t in enumerate(trials) if i % count == index]
        todo = [t for t in mine if t.name not in done or (retry_failed and done[t.name]["status"] == "failed")]
        if len(mine) > len(todo):
            log(f"resuming {out}: {len(mine) - len(todo)} of {len(mine)} trials already finished, {len(todo)} to run")
        units = [[t] for t in todo] if mode == "solo" else groups(todo)
        bar = reporting.Progress(len(todo), 0, "trial", enabled=progress and bool(todo), log=log)
        start, stopped = time.perf_counter(), False
        for unit in units:
            try:
                results = [run_solo(config, unit[0], out, should_stop)] if mode == "solo" else \
                    run_group(config, unit, should_stop)
            except UserError as e:
                if mode == "solo" and "in use by another process" in str(e):
                    log(f"{unit[0].name}: skipped, {e}")
                    continue
                results = [_failed(t, config, mode, e) for t in unit]
            if results is None or None in results:
                stopped = True
                break
            for t, r in zip(unit, results):
                os.makedirs(trial_dir(out, t), exist_ok=True)
                reporting.write_atomic(os.path.join(trial_dir(out, t), "result.json"),
                                       reporting.dumps({**r, "config": configs.as_dict(trial_config(config, t))}))
                log(f"{r['trial']}: perplexity {r['final_ppl']:.2f}" if r["status"] == "ok"
                    else f"{r['trial']}: FAILED: {r['reason']}")
            bar.update(len(unit))
        bar.close()
        summary = write_outputs(out, config, trials, config_file, overrides)
    return {**summary, "ran": len(todo), "skipped": len(mine) - len(todo), "stopped": stopped,
            "elapsed_s": time.perf_counter() - start}


def groups(trials: Sequence[Trial]) -> list[list[Trial]]:
    """Trials that may share one vmapped program: equal in everything but learning rate and seed."""
    key = lambda t: tuple((k, v) for k, v in t.values if k not in ("learning_rate", "seed"))
    groups: dict = {}
    for t in trials:
        groups.setdefault(key(t), []).append(t)
    return list(groups.values())

