"""Hyperparameter sweeps: hidden size x learning rate x seed, many trials per compiled program.

A *trial* is one training run: the sweep's base config with ``num_hiddens``,
``learning_rate`` and ``seed`` set. Trials that share a hidden size have the
same shapes, and the learning rate lives in the optimizer state
(``train.make_optimizer`` uses ``optax.inject_hyperparams``), so a *group* of
them trains as one program: ``jax.vmap`` of ``train.train_block`` over the
stacked train states, the recurrent states and the minibatches, jitted once.

Each trial of a group sees exactly the minibatches it would see alone (its own
``Experiment.epoch_batches(epoch)``, from its own seed), so trial k of a
vmapped group is the computation ``python -m lstm_jax.train`` runs for that
config (``tests/test_sweep.py`` checks the curves agree). A trial whose loss
stops being finite is marked failed (with the epoch) and frozen; the rest of
its group trains on.

Outputs under the sweep's directory::

    sweep_config.json        the base config (a rerun must match it to resume)
    trials/<name>/result.json one per finished trial: fields, curve, full config
    results.csv, results.json one row per trial of the grid that has finished
    heatmap.png, curves.png  final perplexity per (hidden, lr); curves per trial
    best.json                the best trial and the command that reproduces it

Library code: nothing here reads absl flags. ``scripts/sweep.py`` is the CLI.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
import traceback
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstm_jax import configs, train
from lstm_jax.errors import UserError

Log = Callable[[str], None]

# Fields a trial sets; everything else comes from the base config.
GRID_FIELDS = ("num_hiddens", "learning_rate", "seed")

CSV_FIELDS = ("trial", "hidden", "lr", "seed", "status", "final_ppl", "final_val_ppl", "epochs",
              "tokens_per_sec", "group_tokens_per_sec", "wall_s", "train_s", "setup_s", "mode",
              "group_size", "failed_epoch", "reason", "model")


# --------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trial:
    hidden: int
    lr: float
    seed: int

    @property
    def name(self) -> str:
        """A file-name-safe, unique id: ``h256_lr0.5_s0`` (lr as Python's repr)."""
        return f"h{self.hidden}_lr{self.lr!r}_s{self.seed}"


def expand_grid(hidden: Iterable[int], lrs: Iterable[float], seeds: Iterable[int]) -> list[Trial]:
    """Every (hidden, lr, seed) combination, in that nesting order, duplicates dropped."""
    trials = [Trial(int(h), float(lr), int(s)) for h, lr, s in itertools.product(hidden, lrs, seeds)]
    return list(dict.fromkeys(trials))


def grid_from_config(config: ml_collections.ConfigDict, hidden=None, lrs=None, seeds=None) -> list[Trial]:
    """The grid: explicit lists win, then ``config.sweep.*``, then the config's single value."""
    sweep = config.get("sweep") or ml_collections.ConfigDict()
    hidden = hidden or sweep.get("hidden") or (config.num_hiddens,)
    lrs = lrs or sweep.get("learning_rate") or (config.learning_rate,)
    seeds = seeds if seeds else (sweep.get("seeds") or (config.seed,))
    return expand_grid(hidden, lrs, seeds)


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A resolved, unlocked copy without the ``sweep`` section."""
    c = config.copy_and_resolve_references()
    c.unlock()
    if "sweep" in c:
        del c["sweep"]
    return c


def trial_config(config: ml_collections.ConfigDict, trial: Trial) -> ml_collections.ConfigDict:
    """The full config of one trial: what ``python -m lstm_jax.train`` would run."""
    c = base_config(config)
    c.num_hiddens, c.learning_rate, c.seed = trial.hidden, float(trial.lr), trial.seed
    return c


def plan_units(trials: Sequence[Trial], vmap: bool = True, group_size: int = 0,
               jobs: int = 1) -> list[list[Trial]]:
    """How trials are run: lists trained together (vmap) or one by one (lists of one).

    A vmapped unit holds trials of one hidden size, at most ``group_size`` of
    them (0: no limit). With ``jobs`` processes and fewer units than that,
    the largest units are split so every process gets work.
    """
    if not vmap:
        return [[t] for t in trials]
    units = []
    for h in dict.fromkeys(t.hidden for t in trials):
        group = [t for t in trials if t.hidden == h]
        size = group_size if group_size > 0 else len(group)
        units += [group[i:i + size] for i in range(0, len(group), size)]
    while units and len(units) < jobs:
        largest = max(range(len(units)), key=lambda i: len(units[i]))
        unit = units[largest]
        if len(unit) < 2:
            break
        half = (len(unit) + 1) // 2
        units[largest:largest + 1] = [unit[:half], unit[half:]]
    return units


# --------------------------------------------------------------------------
# Training a unit: a vmapped group, or trials one by one
# --------------------------------------------------------------------------


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _group_block(model, optimizer, random_iter, active, ts, state, X_NxBxT, Y_NxBxT):
    """``train.train_block`` for one trial; a trial that is no longer ``active`` stays as it was."""
    new_ts, new_state, metrics = train.train_block(model, optimizer, random_iter, ts, state,
                                                   X_NxBxT, Y_NxBxT)
    keep = functools.partial(jnp.where, active)
    return jax.tree.map(keep, new_ts, ts), jax.tree.map(keep, new_state, state), metrics


def _new_result(trial: Trial, config, mode: str, group_size: int) -> dict:
    return {"trial": trial.name, "hidden": trial.hidden, "lr": trial.lr, "seed": trial.seed,
            "model": config.model, "status": "running", "final_ppl": None, "final_val_ppl": None,
            "epochs": 0, "tokens_per_sec": None, "group_tokens_per_sec": None, "wall_s": None,
            "train_s": None, "setup_s": None, "mode": mode, "group_size": group_size,
            "failed_epoch": None, "reason": "", "curve": []}


def _diverged(result: dict, losses: np.ndarray, epoch: int, lr: float) -> None:
    bad = losses[~np.isfinite(losses)][0]
    result.update(status="failed", failed_epoch=epoch + 1,
                  reason=f"the training loss became {bad} in epoch {epoch + 1} (learning_rate={lr})")


def _finish(result: dict, tokens_per_epoch: int, epoch_seconds: list[float], group_size: int,
            setup_s: float, train_s: float) -> dict:
    if result["curve"]:
        last = result["curve"][-1]
        if result["status"] == "running":
            result["status"] = "ok"
            result["final_ppl"] = last["train_ppl"]
            result["final_val_ppl"] = last.get("val_ppl")
    result["epochs"] = len(result["curve"])
    if result["status"] == "running":  # no epoch at all (num_epochs can't be 0; defensive)
        result.update(status="failed", reason="no epoch finished")
    if epoch_seconds:
        rate = float(np.median([tokens_per_epoch / s for s in epoch_seconds]))
        result["tokens_per_sec"], result["group_tokens_per_sec"] = rate, rate * group_size
    result["setup_s"], result["train_s"] = setup_s, train_s
    result["wall_s"] = setup_s + train_s
    return result


def train_group(config: ml_collections.ConfigDict, trials: Sequence[Trial],
                on_epoch: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train trials of one hidden size together: one jitted, vmapped program.

    Returns one result per trial (see :data:`CSV_FIELDS`; plus ``curve``,
    a list of ``{"epoch", "train_ppl"[, "val_ppl"]}``). ``wall_s`` and
    ``train_s`` are the group's, shared by its trials; ``tokens_per_sec`` is
    each trial's own rate and ``group_tokens_per_sec`` the group's.
    """
    if len({t.hidden for t in trials}) != 1:
        raise ValueError("a vmapped group needs trials of one hidden size")
    wall_start = time.perf_counter()
    cfgs = [trial_config(config, t) for t in trials]
    for c in cfgs:
        configs.validate(c)
    exp = train.Experiment.from_config(cfgs[0])  # data, model, optimizer: the same for all
    K, c0 = len(trials), exp.config
    results = [_new_result(t, exp.config, "vmap", K) for t in trials]

    # Each trial's initial state is exactly its solo one (its seed, its lr in opt_state).
    ts = _stack([train.init_train_state(exp.model, train.make_optimizer(c.learning_rate, c.grad_clip),
                                        jax.random.key(c.seed)) for c in cfgs])
    active = np.ones(K, bool)  # False once a trial diverged: it is frozen from then on

    def zero_state():  # d2l: every epoch starts from zeros (a fresh buffer: the old one is donated)
        return _stack([exp.model.initial_state(c0.batch_size)] * K)

    fn = jax.jit(jax.vmap(functools.partial(_group_block, exp.model, exp.optimizer, c0.data.random_iter)),
                 donate_argnums=(1, 2))
    compiled = {}
    for n in sorted(set(exp.block_sizes())):
        XY = jax.ShapeDtypeStruct((K, n, c0.batch_size, c0.num_steps), jnp.int32)
        compiled[n] = fn.lower(jnp.asarray(active), ts, zero_state(), XY, XY).compile()
    heldout = train.heldout_streams(exp.corpus.val, c0.batch_size) if c0.data.num_val else None
    evaluate = None
    if heldout is not None:
        evaluate = jax.jit(jax.vmap(functools.partial(train.eval_loss, exp.model), in_axes=(0, None, None)))
        evaluate = evaluate.lower(ts.params, heldout.X, heldout.Y).compile()

    tokens_per_epoch = exp.batches_per_epoch * c0.batch_size * c0.num_steps
    # Each trial sees its own seed's minibatches: Experiment.epoch_batches with its config.
    by_seed = {c.seed: dataclasses.replace(exp, config=c) for c in cfgs}
    seeds = sorted(by_seed)
    seed_index = np.array([seeds.index(c.seed) for c in cfgs])
    epoch_seconds = []
    train_start = time.perf_counter()
    for epoch in range(c0.num_epochs):
        start = time.perf_counter()
        batches = [by_seed[s].epoch_batches(epoch) for s in seeds]  # one draw per distinct seed
        X = np.stack([b.X for b in batches])[seed_index]
        Y = np.stack([b.Y for b in batches])[seed_index]
        state, mask, outs, s = zero_state(), jnp.asarray(active), [], 0
        for n in exp.block_sizes():
            ts, state, metrics = compiled[n](mask, ts, state, X[:, s:s + n], Y[:, s:s + n])
            outs.append(metrics["loss"])
            s += n
        losses = np.concatenate(jax.device_get(outs), axis=1)  # (K, batches_per_epoch)
        val = np.asarray(evaluate(ts.params, heldout.X, heldout.Y)) if evaluate is not None else None
        epoch_seconds.append(time.perf_counter() - start)
        for k in np.flatnonzero(active):
            if not np.all(np.isfinite(losses[k])):
                _diverged(results[k], losses[k], epoch, cfgs[k].learning_rate)
                active[k] = False
                continue
            record = {"epoch": epoch + 1, "train_ppl": train.perplexity(losses[k].mean())}
            if val is not None:
                record["val_ppl"] = train.perplexity(val[k])
            results[k]["curve"].append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, c0.num_epochs)
        if not active.any():
            break
    train_s = time.perf_counter() - train_start
    setup_s = train_start - wall_start  # data, init and compile
    return [_finish(r, tokens_per_epoch, epoch_seconds, K, setup_s, train_s) for r in results]


# Compiled train steps for --no-vmap, per process, keyed by everything but lr and seed:
# trials of one hidden size share one program, so one-by-one pays compile once per shape.
_SOLO_CACHE: dict[str, tuple] = {}


def _shape_key(config) -> str:
    c = base_config(config)
    c.learning_rate, c.seed = 1.0, 0
    return c.to_json(sort_keys=True)


def train_solo(config: ml_collections.ConfigDict, trial: Trial,
               on_epoch: Callable[[int, int], None] | None = None) -> dict:
    """Train one trial alone with train.py's own pieces (compile_steps, train_epoch)."""
    wall_start = time.perf_counter()
    exp = train.Experiment.from_config(trial_config(config, trial))
    c = exp.config
    result = _new_result(trial, c, "solo", 1)
    ts = exp.init_train_state()
    key = _shape_key(c)
    if key not in _SOLO_CACHE:
        compiled, _ = train.compile_steps(exp, ts)
        _SOLO_CACHE[key] = (compiled, jax.jit(functools.partial(train.eval_loss, exp.model)))
    compiled, evaluate = _SOLO_CACHE[key]
    heldout = train.heldout_streams(exp.corpus.val, c.batch_size) if c.data.num_val else None
    tokens_per_epoch = exp.batches_per_epoch * c.batch_size * c.num_steps
    epoch_seconds = []
    train_start = time.perf_counter()
    for epoch in range(c.num_epochs):
        start = time.perf_counter()
        ts, m = train.train_epoch(exp, compiled, ts, epoch)
        if not np.all(np.isfinite(m["loss"])):
            _diverged(result, m["loss"], epoch, c.learning_rate)
            break
        record = {"epoch": epoch + 1, "train_ppl": train.perplexity(m["loss"].mean())}
        if heldout is not None:
            record["val_ppl"] = train.perplexity(evaluate(ts.params, heldout.X, heldout.Y))
        epoch_seconds.append(time.perf_counter() - start)
        result["curve"].append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, c.num_epochs)
    train_s = time.perf_counter() - train_start
    setup_s = train_start - wall_start  # data, init and (first trial of a shape only) compile
    return _finish(result, tokens_per_epoch, epoch_seconds, 1, setup_s, train_s)


def _error_results(config, trials: Sequence[Trial], mode: str, error: BaseException) -> list[dict]:
    reason = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    results = []
    for t in trials:
        r = _new_result(t, config, mode, len(trials))
        r.update(status="failed", reason=reason.strip().splitlines()[0] if reason.strip() else reason)
        results.append(r)
    return results


def run_unit(config: ml_collections.ConfigDict, trials: Sequence[Trial], vmap: bool, out: str | None = None,
             on_epoch: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train one unit; an exception marks its trials failed (with the reason) instead of raising.

    With ``out``, each trial's result is saved there as soon as the unit ends.
    """
    try:
        if vmap and len(trials) > 1:
            results = train_group(config, trials, on_epoch)
        else:
            results = [train_solo(config, t, on_epoch) for t in trials]
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a failing trial must not stop the sweep
        if not isinstance(e, UserError):
            traceback.print_exc(file=sys.stderr)
        results = _error_results(config, trials, "vmap" if vmap and len(trials) > 1 else "solo", e)
    if out is not None:
        for t, r in zip(trials, results):
            save_result(out, r, trial_config(config, t))
    return results


# --------------------------------------------------------------------------
# Bookkeeping on disk: per-trial results, resume, tables
# --------------------------------------------------------------------------


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x)}")


def _dumps(obj) -> str:
    # Non-finite floats become null: results.json stays strict JSON.
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, default=_json_default, allow_nan=False)


def trial_dir(out: str, trial: Trial | str) -> str:
    return os.path.join(out, "trials", trial if isinstance(trial, str) else trial.name)


def save_result(out: str, result: dict, config: ml_collections.ConfigDict) -> None:
    path = trial_dir(out, result["trial"])
    os.makedirs(path, exist_ok=True)
    _write_atomic(os.path.join(path, "result.json"),
                  _dumps({**result, "config": json.loads(config.to_json())}))


def load_result(out: str, trial: Trial) -> dict | None:
    path = os.path.join(trial_dir(out, trial), "result.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # a torn file: the trial is run again
    result.pop("config", None)
    # The name is the identity; strict JSON stored a non-finite lr (inf) as null.
    result.update(trial=trial.name, hidden=trial.hidden, lr=trial.lr, seed=trial.seed)
    return result if result.get("status") in ("ok", "failed") else None


def check_sweep_dir(out: str, config: ml_collections.ConfigDict) -> None:
    """Refuse to mix trials of different base configs in one directory.

    The first run writes ``sweep_config.json``; a rerun (resume) must have the
    same config apart from the grid fields and lstm_impl, else it is an error
    naming a field.
    """
    mine = json.loads(base_config(config).to_json(sort_keys=True))
    for name in GRID_FIELDS:
        mine.pop(name)
    path = os.path.join(out, "sweep_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        # lstm_impl may change, as for checkpoints: the same function either way.
        theirs, ours = ({k: v for k, v in c.items() if k != "lstm_impl"} for c in (theirs, mine))
        if theirs != ours:
            diff = _first_difference(theirs, ours)
            raise UserError(f"{out} holds a sweep of a different config ({diff}); "
                            "use another --out, or the same config to resume it")
        return
    os.makedirs(out, exist_ok=True)
    _write_atomic(path, json.dumps(mine, indent=2, sort_keys=True))


def _first_difference(a, b, prefix="config") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
    return f"{prefix} was {a!r}, now {b!r}"


def _row(result: dict) -> dict:
    return {k: result.get(k) for k in CSV_FIELDS}


def write_tables(out: str, results: Sequence[dict]) -> None:
    """``results.csv`` (flat fields) and ``results.json`` (the same rows plus each curve)."""
    buf = []

    class _W:
        def write(self, s):
            buf.append(s)
    writer = csv.DictWriter(_W(), fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if v is None else v) for k, v in _row(r).items()})
    _write_atomic(os.path.join(out, "results.csv"), "".join(buf))
    rows = [{**_row(r), "curve": r.get("curve", [])} for r in results]
    _write_atomic(os.path.join(out, "results.json"), _dumps(rows))


def score(result: dict) -> float:
    """What ranks trials: final held-out perplexity if there is one, else final training perplexity."""
    if result.get("status") != "ok":
        return math.inf
    v = result.get("final_val_ppl")
    v = result.get("final_ppl") if v is None else v
    return math.inf if v is None else float(v)


def score_name(results: Sequence[dict]) -> str:
    return "held-out perplexity" if any(r.get("final_val_ppl") is not None for r in results) \
        else "training perplexity"


def best_trial(results: Sequence[dict]) -> dict | None:
    ok = [r for r in results if math.isfinite(score(r))]
    return min(ok, key=score) if ok else None


def cell_table(results: Sequence[dict]):
    """Mean score over seeds per (hidden, lr); NaN where no seed finished ok."""
    hiddens = sorted({r["hidden"] for r in results})
    lrs = sorted({r["lr"] for r in results})
    table = np.full((len(hiddens), len(lrs)), np.nan)
    failed = np.zeros_like(table, dtype=int)
    for i, h in enumerate(hiddens):
        for j, lr in enumerate(lrs):
            cell = [r for r in results if r["hidden"] == h and r["lr"] == lr]
            scores = [score(r) for r in cell if math.isfinite(score(r))]
            failed[i, j] = len(cell) - len(scores)
            if scores:
                table[i, j] = float(np.mean(scores))
    return hiddens, lrs, table, failed


def format_table(results: Sequence[dict]) -> str:
    """A text table: hidden size (rows) x learning rate (columns), mean over seeds."""
    hiddens, lrs, table, failed = cell_table(results)
    head = f"final {score_name(results)} (mean over seeds; 'failed' = no seed finished)"
    cols = [f"lr {lr:g}" for lr in lrs]
    width = max(9, *(len(c) for c in cols))
    lines = [head, "hidden  " + "".join(c.rjust(width) for c in cols)]
    for i, h in enumerate(hiddens):
        cells = []
        for j in range(len(lrs)):
            v = table[i, j]
            text = "failed" if np.isnan(v) else f"{v:.2f}" + ("*" if failed[i, j] else "")
            cells.append(text.rjust(width))
        lines.append(f"{h:<8}" + "".join(cells))
    if (failed > 0)[np.isfinite(table)].any():
        lines.append("* some seeds of this cell failed; the mean is over the others")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(results: Sequence[dict], path: str, title: str = "") -> None:
    """Hidden size x learning rate, colour = final perplexity (mean over seeds), best cell boxed."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import ScalarFormatter

    plt = _pyplot()
    hiddens, lrs, table, failed = cell_table(results)
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 2.5, 0.8 * len(hiddens) + 2), dpi=120)
    finite = table[np.isfinite(table)]
    norm = None
    if finite.size:
        lo, hi = finite.min(), max(finite.max(), finite.min() * 1.001)
        norm = LogNorm(lo, hi) if hi / lo > 3 else Normalize(lo, hi)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(table), cmap=cmap, norm=norm, origin="lower", aspect="auto")
    if finite.size:
        fig.colorbar(im, ax=ax, label=f"final {score_name(results)}", format=ScalarFormatter())
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(hiddens)), [str(h) for h in hiddens])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("hidden units")
    for i in range(len(hiddens)):
        for j in range(len(lrs)):
            v = table[i, j]
            text = "failed" if np.isnan(v) else f"{v:.2f}" + (f"\n({failed[i, j]} failed)" if failed[i, j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or (norm and norm(v) < 0.5) else "white")
    if finite.size:
        i, j = np.unravel_index(np.nanargmin(table), table.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
        ax.plot([j], [i + 0.32], marker="*", color="red", markersize=12)
    ax.set_title(title or "final perplexity (best cell boxed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: Sequence[dict], path: str, title: str = "") -> None:
    """Training perplexity vs epoch, one panel per hidden size, one line per trial (colour = lr)."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    plt = _pyplot()
    hiddens = sorted({r["hidden"] for r in results})
    finite = [p["train_ppl"] for r in results for p in r.get("curve") or [] if math.isfinite(p["train_ppl"])]
    log_scale = bool(finite) and max(finite) / max(min(finite), 1e-9) > 10
    lrs = sorted({r["lr"] for r in results})
    colours = plt.get_cmap("plasma")(np.linspace(0, 0.85, max(len(lrs), 1)))
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in results})
    fig, axes = plt.subplots(1, len(hiddens), figsize=(4.2 * len(hiddens), 3.8), dpi=120,
                             squeeze=False, sharey=True)
    for ax, h in zip(axes[0], hiddens):
        for r in (r for r in results if r["hidden"] == h):
            curve = r.get("curve") or []
            xs = [p["epoch"] for p in curve]
            ys = [p["train_ppl"] for p in curve]
            colour = colours[lrs.index(r["lr"])]
            style = styles[seeds.index(r["seed"]) % len(styles)]
            label = None
            if r["seed"] == seeds[0]:
                label = f"lr {r['lr']:g}" + (" (failed)" if r["status"] != "ok" else "")
            ax.plot(xs, ys, style, color=colour, label=label, linewidth=1.2)
            if r["status"] == "failed" and xs:
                ax.plot([xs[-1]], [ys[-1]], "x", color=colour, markersize=8)
        if log_scale:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{h} hidden")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].set_ylabel("training perplexity")
    axes[0][-1].legend(fontsize=8, title=f"seeds: {', '.join(map(str, seeds))} (line styles)",
                       title_fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------


def reproduce_command(trial: Trial, config_file: str | None, overrides: Sequence[str] = (),
                      workdir: str | None = None) -> str:
    """The ``python -m lstm_jax.train`` line that trains ``trial`` alone."""
    args = ["python", "-m", "lstm_jax.train", "--config", config_file or "<config file>"]
    if workdir:
        args.append(f"--workdir={workdir}")
    args += list(overrides)
    args += [f"--config.num_hiddens={trial.hidden}", f"--config.learning_rate={float(trial.lr)!r}",
             f"--config.seed={trial.seed}"]
    return " ".join(shlex.quote(a) for a in args)


def _worker_init(cores) -> None:
    """Pin a --jobs worker to its share of the CPUs before JAX starts its thread pools."""
    share = cores.get()
    try:
        os.sched_setaffinity(0, share)
    except (AttributeError, OSError):
        pass
    if len(share) == 1:  # one core: no intra-op threads to fight over it
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()


def _core_shares(jobs: int) -> list[set[int]]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if jobs <= len(cpus):
        return [set(cpus[i::jobs]) for i in range(jobs)]
    return [{cpus[i % len(cpus)]} for i in range(jobs)]


def run_sweep(config: ml_collections.ConfigDict, trials: Sequence[Trial], out: str, *, vmap: bool = True,
              jobs: int = 1, group_size: int = 0, retry_failed: bool = False, log: Log = print,
              progress: bool = True, config_file: str | None = None,
              overrides: Sequence[str] = ()) -> dict:
    """Run the trials not finished in ``out`` yet, then write tables and plots of all of them.

    Returns ``{"results": [...], "best": result or None, "command": str or None,
    "ran": number of trials trained now, "skipped": number found finished}``.
    """
    if not trials:
        raise UserError("the sweep has no trials")
    check_sweep_dir(out, config)
    done = {}
    for t in trials:
        r = load_result(out, t)
        if r is not None and (r["status"] == "ok" or not retry_failed):
            done[t] = r
    todo = [t for t in trials if t not in done]
    units = plan_units(todo, vmap, group_size, jobs)
    if done:
        log(f"resuming {out}: {len(done)} of {len(trials)} trials already finished, {len(todo)} to run")
    if todo:
        mode = ("one by one" if not vmap else
                f"in {len(units)} vmapped group{'s' if len(units) != 1 else ''} "
                f"(sizes {', '.join(str(len(u)) for u in units)})")
        log(f"training {len(todo)} trials {mode}" + (f" in {jobs} processes" if jobs > 1 else "")
            + f" on {train.device_summary() if jobs == 1 else 'cpu/accelerator per process'}")

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="trials", unit="trial", file=sys.stderr, disable=None)

    def finished(results):
        for r in results:
            done[Trial(r["hidden"], r["lr"], r["seed"])] = r
            msg = (f"{r['trial']}: perplexity {r['final_ppl']:.2f}" if r["status"] == "ok"
                   else f"{r['trial']}: FAILED: {r['reason']}")
            if bar is not None:
                bar.write(msg)
                bar.update(1)
            else:
                log(msg)
        write_tables(out, [done[t] for t in trials if t in done])

    start = time.perf_counter()
    if jobs <= 1:
        for unit in units:
            def on_epoch(epoch, total, unit=unit):
                if bar is not None:
                    bar.set_postfix_str(f"h{unit[0].hidden} x{len(unit)}: epoch {epoch}/{total}")
            finished(run_unit(config, unit, vmap, out, on_epoch))
    else:
        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        cores = ctx.Queue()
        for share in _core_shares(jobs):
            cores.put(share)
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                                    initargs=(cores,)) as pool:
            futures = {pool.submit(run_unit, config, unit, vmap, out): unit for unit in units}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    results = fut.result()
                except Exception as e:  # noqa: BLE001 - e.g. a worker killed for memory
                    results = _error_results(config, futures[fut], "vmap" if vmap else "solo", e)
                    for t, r in zip(futures[fut], results):
                        save_result(out, r, trial_config(config, t))
                finished(results)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()

    results = [done[t] for t in trials]
    write_tables(out, results)
    title = f"{config.model} LSTM, {config.num_epochs} epochs"
    plot_heatmap(results, os.path.join(out, "heatmap.png"), f"{title}: final {score_name(results)}")
    plot_curves(results, os.path.join(out, "curves.png"), title)
    best = best_trial(results)
    command = None
    if best is not None:
        t = Trial(best["hidden"], best["lr"], best["seed"])
        command = reproduce_command(t, config_file, overrides, os.path.join(out, "best"))
    _write_atomic(os.path.join(out, "best.json"), _dumps({"best": best, "command": command}))
    return {"results": results, "best": best, "command": command, "ran": len(todo),
            "skipped": len(trials) - len(todo), "elapsed_s": elapsed}
