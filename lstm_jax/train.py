"""Train a recurrent language model (d2l's ``train_ch8``), from a config file.

  python -m lstm_jax.train --config experiments/scratch.py
  python -m lstm_jax.train --config experiments/shakespeare.py --config.time_budget_s=180
  python -m lstm_jax.train --config experiments/scratch.py --workdir runs/try1 \\
      --config.num_hiddens=512 --config.learning_rate=2.0 --config.data.path=my.txt

Any field of the config can be overridden with --config.<field>=<value> (--help lists them,
docs/config.md explains them; misspelled fields are refused). Outputs go to --workdir (default
runs/<config file name>): metrics.jsonl, perplexity.png, summary.json, config.json, vocab.json,
checkpoints/ and best/. A workdir that holds checkpoints is resumed; Ctrl-C saves a checkpoint and
stops. Continue text with python -m lstm_jax.predict --workdir DIR; score a checkpoint with
python -m lstm_jax.evaluate --workdir DIR.

A run is a function of its config: the seed fixes the initial weights, every epoch's minibatches and
dropout; on machines of the same kind (CPU model and flags) the numbers repeat bit for bit. Every
device JAX sees is used (data parallel); with several processes (hosts), run the same command in
each, adding --coordinator=auto (Slurm, Open MPI, ...) or --coordinator=HOST0:PORT --num_processes=N
--process_id=I
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: a Ctrl-C while starting exits quietly
    from lstm_jax import cli

    cli.exit_on_interrupt_while_starting()

import contextlib
import json
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from lstm_jax import checkpoint, configs, distributed, metrics, predict, steps
from lstm_jax.errors import UserError
from lstm_jax.experiment import Experiment, check_memory


class Position(NamedTuple):
    """Where a run stands: its train state and data position, and what it has not recorded yet."""

    ts: steps.TrainState
    state: tuple  # the cell's state (cells.lstm.LSTMState for the LSTM)
    epoch: int  # the epoch in progress (0-based)
    done: int  # its minibatches already trained
    pending: dict  # metrics since the last record: per-minibatch "loss", "grad_norm"; "seconds", "tokens"
    elapsed_s: float  # training seconds so far (compile, evaluation and saving excluded)
    num_updates: int | None = None  # the run's length, once known (a time budget's, measured)


def _no_pending() -> dict:
    return {"loss": [], "grad_norm": [], "seconds": 0.0, "tokens": 0}


def _resume(exp: Experiment, workdir: str, ckpts: checkpoint.Checkpoints, log) -> Position | None:
    """None for a fresh run, else the latest readable checkpoint, once shown compatible."""
    if ckpts.latest_step() is None:
        return None

    def check(meta, saved_config, vocab):
        diffs = configs.differences(saved_config, exp.config)
        if diffs:
            raise UserError(f"{workdir} holds a run with a different config ({'; '.join(diffs)}); "
                            "resume with the config it was trained with, use another --workdir, "
                            "or start over with --config.overwrite=True")
        if vocab != exp.corpus.vocab:
            raise UserError(f"{workdir} was trained with a different vocabulary than {exp.corpus.source} "
                            "gives; use the same corpus, another --workdir, or --config.overwrite=True")

    r = checkpoint.restore_latest_readable(ckpts, exp.abstract_arrays(), warn=lambda m: log(f"warning: {m}"),
                                           quarantine=os.path.join(workdir, "unreadable-checkpoints"),
                                           check=check)
    meta = r.meta
    partial = meta.get("partial") or {}
    pending = {**{k: [np.asarray(partial.get(k, []), np.float32)] for k in ("loss", "grad_norm")},
               "seconds": float(partial.get("seconds", 0.0)),  # older checkpoints lack "tokens"
               "tokens": int(partial.get("tokens", len(partial.get("loss", [])) * exp.config.batch_size
                                         * exp.config.num_steps))}
    if distributed.is_main_process():
        metrics.MetricsWriter(os.path.join(workdir, "metrics.jsonl")).truncate_after(r.step)
    at = (f"epoch {meta['epoch'] + 1}, minibatch {meta['batch'] + 1}" if meta["batch"]
          else f"the end of epoch {meta['epoch']}")
    log(f"resuming from checkpoint {ckpts.where(r.step)} ({at})")
    return Position(r.arrays["train_state"], r.arrays["lstm_state"], meta["epoch"], meta["batch"],
                    pending, float(meta.get("elapsed_s", 0.0)), meta.get("num_updates"))


def _save(ckpts: checkpoint.Checkpoints, exp: Experiment, pos: Position) -> int:
    p = pos.pending
    partial = {**{k: np.concatenate(p[k]).tolist() if p[k] else [] for k in ("loss", "grad_norm")},
               "seconds": p["seconds"], "tokens": p["tokens"]}
    step = int(pos.ts.step)
    ckpts.save(step, {"train_state": pos.ts, "lstm_state": pos.state}, {"epoch": pos.epoch, "batch": pos.done,
               "partial": partial, "elapsed_s": pos.elapsed_s, "num_updates": exp.num_updates},
               exp.config, exp.corpus.vocab)
    return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = print, progress: bool = True,
                       should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train as the config says, writing metrics, plots and checkpoints into ``workdir``; returns a
    summary. A workdir that holds checkpoints is resumed from the latest, one that holds results but
    no checkpoint is refused. ``should_stop`` is polled after each compiled call: when it turns true
    the run saves a checkpoint where it stands and returns (``interrupted`` set)."""
    exp = Experiment.from_config(config)
    is_main = distributed.is_main_process()
    if not is_main:  # every process trains; only process 0 writes or logs
        log, progress = (lambda message: None), False
    c = exp.config
    log(f"devices: {distributed.describe()}; model {c.model} {c.cell} ({exp.model.runs}), {c.num_layers} x "
        f"{c.num_hiddens} hidden, {exp.model.num_params():,} parameters; vocab {len(exp.corpus.vocab)}, "
        f"{len(exp.corpus.train):,} training tokens ({exp.batches_per_epoch} minibatches of "
        f"{c.batch_size}x{c.num_steps} per epoch), corpus {exp.corpus.source}")
    check_memory(exp, log)
    with checkpoint.locked(workdir) if is_main else contextlib.nullcontext():
        if is_main:
            if c.overwrite:
                checkpoint.clear(workdir)
            checkpoint.check_outputs_have_checkpoints(workdir)
        ckpts = checkpoint.Checkpoints(os.path.join(workdir, checkpoint.CHECKPOINTS), c.max_to_keep)
        best = checkpoint.Checkpoints(os.path.join(workdir, checkpoint.BEST), 1)
        try:
            pos = _resume(exp, workdir, ckpts, log)
            budgeted = c.time_budget_s > 0 and not c.num_updates
            if budgeted and pos is not None and pos.num_updates:  # measured when the run started
                exp = exp.with_num_updates(pos.num_updates)
            if pos is not None and (int(pos.ts.step) >= exp.num_updates or budgeted and not pos.num_updates
                                    and pos.elapsed_s >= c.time_budget_s):  # (0.2 budgets were in seconds)
                return _already_finished(exp, workdir, pos, log)
            measure = budgeted and not (pos and pos.num_updates)
            return _train(exp, workdir, ckpts, best, pos, log, progress, should_stop, measure)
        finally:
            ckpts.close()
            best.close()


def _already_finished(exp, workdir, pos, log) -> dict:
    log(f"{workdir} has already trained its {int(pos.ts.step)} updates (checkpoint {int(pos.ts.step)}); raise "
        "--config.num_epochs, --config.num_updates or --config.time_budget_s to train on")
    try:
        with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    return {**summary, "interrupted": False, "train_state": pos.ts}


def _train(exp: Experiment, workdir: str, ckpts, best_ckpts, pos: Position | None, log, progress,
           should_stop, measure: bool) -> dict:
    c = exp.config
    is_main = distributed.is_main_process()
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if is_main:
        for name, text in (("config.json", c.to_json(indent=2)), ("vocab.json", exp.corpus.vocab.to_json())):
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
    fresh = pos is None
    if fresh:  # placed on the mesh, as the compiled step returns them (a checkpoint saves them so)
        sh = exp.shardings
        pos = Position(distributed.place(exp.init_train_state(), sh.replicated),
                       exp.initial_state(), 0, 0, _no_pending(), 0.0)
    ts, state, compile_s = exp.compile(pos.ts, pos.state)
    log(f"compiled the train step{' and evaluation' if exp.heldout else ''} in {compile_s:.2f} s")
    if measure:  # a time budget: the schedule ends with it, so its length is fixed (and kept) now
        exp = exp.with_num_updates(exp.measure_num_updates(ts, state, c.time_budget_s))
        log(f"time budget {c.time_budget_s:g} s: {exp.num_updates} updates at the measured speed "
            f"(--config.num_updates={exp.num_updates} repeats this run without the budget)")
        ts, state, seconds = exp.compile(ts, state)  # the schedule's length is part of the program
        compile_s += seconds
    pos = pos._replace(ts=ts, state=state)
    if fresh:  # results never exist without a checkpoint to resume them from
        _save(ckpts, exp, pos)
    writer = metrics.MetricsWriter(metrics_path)
    records = metrics.read_metrics(metrics_path)
    best_step = best_ckpts.latest_step()
    best_val = best_ckpts.restore_json(best_step)[0]["val_loss"] if best_step is not None else math.inf
    has_val = "val" in exp.heldout
    ts, state, epoch, done, pending, elapsed = pos.ts, pos.state, pos.epoch, pos.done, pos.pending, pos.elapsed_s
    step = int(ts.step)
    last_saved = ckpts.latest_step()
    bpe, N = exp.batches_per_epoch, exp.block_length
    total = exp.num_updates
    bar = metrics.Progress(total, step, "step", enabled=progress, log=log)
    buffers = {}  # per minibatch length: the (N, B, length) inputs and targets of one call
    stopped = False  # on should_stop()

    def record(evaluate: bool) -> dict:
        nonlocal pending, best_val, ts
        losses, norms = np.concatenate(pending["loss"]), np.concatenate(pending["grad_norm"])
        rec = steps.train_record(epoch, step, elapsed, losses, norms, pending["tokens"], pending["seconds"])
        pending = _no_pending()
        if evaluate and has_val:
            history = [r["val_loss"] for r in records if "val_loss" in r]
            rec.update(exp.evaluate(steps.eval_params(ts), "val"))
            if rec["val_loss"] < best_val:
                best_val = rec["val_loss"]
                best_ckpts.save(step, {"train_state": ts._replace(params=steps.eval_params(ts)), "lstm_state": state},
                                {"epoch": epoch, "batch": done, "val_loss": best_val}, c, exp.corpus.vocab)
            if c.optimizer == "ntasgd" and not bool(ts.opt_state[-1].active) and len(history) > c.nonmono \
                    and rec["val_loss"] > min(history[:-c.nonmono]):  # AWD-LSTM's non-monotone trigger
                ts, rec["averaging_from"] = steps.start_averaging(ts), step
                log(f"NT-ASGD: validation {rec['val_loss']:.4f} is worse than the best before the last "
                    f"{c.nonmono} evaluations; averaging the weights from step {step} on")
        if is_main:
            writer.write(rec)
        records.append(rec)
        return rec

    while step < total and not stopped:
        batches = exp.epoch_batches(epoch)
        if done == 0:
            state = exp.initial_state()  # d2l: a fresh state every epoch
        while done < bpe and step < total:
            n = min(N, bpe - done, total - step)
            if c.eval_every_steps:
                n = min(n, c.eval_every_steps - step % c.eval_every_steps)
            n, L = batches.same_length(done, n), batches.length(done)  # one call, one length
            start = time.perf_counter()
            block = batches.block(done, n)
            if L not in buffers:
                buffers[L] = tuple(np.zeros((N, c.batch_size, L), np.int32) for _ in "XY")
            X, Y = buffers[L]
            X[:n], Y[:n] = block.X, block.Y
            ts, state, m = exp.train_block(ts, state, X, Y, n, exp.lr_scale(L))
            losses, norms = np.asarray(m["loss"])[:n], np.asarray(m["grad_norm"])[:n]  # waits for the device
            seconds = time.perf_counter() - start
            elapsed += seconds
            pending["loss"].append(losses)
            pending["grad_norm"].append(norms)
            pending["seconds"] += seconds
            pending["tokens"] += n * c.batch_size * L
            done, step = done + n, step + n
            bar.update(n, epoch=f"{epoch + 1}", loss=f"{losses.mean():.3f}")
            if not np.isfinite(losses).all():
                kept = f"; the last checkpoint is {ckpts.where(last_saved)}" if last_saved is not None else ""
                raise UserError(f"the training loss became {losses[~np.isfinite(losses)][0]} in epoch {epoch + 1} "
                                f"(learning_rate={c.learning_rate}, grad_clip={c.grad_clip}); training stopped. "
                                f"Metrics up to step {records[-1]['step'] if records else 0} are in {metrics_path}"
                                f"{kept}; try a smaller learning rate")
            # Decisions every process must take alike (evaluating and saving are collective).
            stopped = distributed.agree(should_stop())
            due = bool(c.eval_every_steps) and step % c.eval_every_steps == 0
            if due or step == total or done == bpe:
                rec = record(evaluate=due or step == total or (done == bpe and not c.eval_every_steps))
                if due and "val_loss" in rec:
                    log(metrics.eval_line(rec))
            if stopped:
                break
        if done == bpe:
            if (epoch + 1) % c.log_every == 0 or step == total:
                log(metrics.epoch_line(records[-1], distributed.describe()))
                for text in _continuations(exp, steps.eval_params(ts)):
                    log(f"  {text}")
            epoch, done = epoch + 1, 0
        pos = Position(ts, state, epoch, done, pending, elapsed)
        if stopped or epoch % c.checkpoint_every == 0 and done == 0 or step == total:
            last_saved = _save(ckpts, exp, pos)
    bar.close()

    if stopped:
        log(f"stopped at step {step} (epoch {epoch + 1}): saved checkpoint {ckpts.where(last_saved)}; "
            "run the same command again to resume")
    return _finish(exp, workdir, compile_s, records, ts, best_ckpts, stopped, last_saved, elapsed, log)


def _finish(exp, workdir, compile_s, records, ts, best_ckpts, stopped, last_saved, train_s, log) -> dict:
    """The plot, the test split scored with the best parameters, summary.json and the last lines."""
    c = exp.config
    is_main = distributed.is_main_process()
    if records and is_main:
        metrics.plot_perplexity(records, os.path.join(workdir, "perplexity.png"), f"{c.model} {c.cell}, "
                                f"{c.num_layers} x {c.num_hiddens}, {c.optimizer} lr {c.learning_rate}")
    final = records[-1] if records else {}
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    summary = {
        "final_train_ppl": final.get("train_ppl"), "final_val_ppl": final.get("val_ppl"),
        "best_val_loss": min(vals) if vals else None,
        "tokens_per_sec_median": float(np.median([r["tokens_per_sec"] for r in records
                                                  if r.get("tokens_per_sec")])) if records else None,
        "compile_s": compile_s, "train_s": train_s, "device": distributed.describe(),
        "num_params": exp.model.num_params(), "epochs": final.get("epoch", 0), "steps": int(ts.step),
        "num_updates": exp.num_updates, "interrupted": stopped, "checkpoint_step": last_saved,
    }
    if not stopped and "test" in exp.heldout:
        params = steps.eval_params(ts)
        if vals and best_ckpts.latest_step() is not None:
            params = best_ckpts.restore(best_ckpts.latest_step(), exp.abstract_arrays()).arrays["train_state"].params
        summary.update(exp.evaluate(params, "test"))
        log(f"test split (best parameters): {summary['test_loss']:.4f} nats/token, "
            f"{summary['test_bpc']:.4f} bits, perplexity {summary['test_ppl']:.3f}")
    summary["continuations"] = _continuations(exp, steps.eval_params(ts))
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    if not stopped and records:
        log(metrics.final_line(summary, final))
        for text in summary["continuations"]:
            log(text)
        log(f"outputs in {workdir}: metrics.jsonl, perplexity.png, summary.json, checkpoints/"
            + (", best/" if vals else ""))
    summary["train_state"] = ts
    return summary


def _continuations(exp: Experiment, params) -> list[str]:
    c = exp.config
    params = jax.tree.map(np.asarray, params)  # batch 1: every process on its own first device
    return [predict.continue_text(exp.model, params, exp.corpus.vocab, p, c.num_preds, warn=False)
            for p in c.prefixes]


def main() -> None:
    from absl import flags

    from lstm_jax import cli

    flags.DEFINE_string("workdir", None, "Where outputs go (default: runs/<config file name>).")
    flags.DEFINE_string("coordinator", None, "Multi-process runs: process 0's HOST:PORT, the same for every "
                        "process, or 'auto' to let JAX find the cluster (Slurm, Open MPI, Kubernetes, Cloud TPU).")
    flags.DEFINE_integer("num_processes", None, "Multi-process runs with --coordinator=HOST:PORT: how many.")
    flags.DEFINE_integer("process_id", None, "Multi-process runs with --coordinator=HOST:PORT: this "
                         "process's rank, 0..N-1; 0 writes the outputs.")

    def run(config, config_path):
        F = flags.FLAGS
        stem = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
        distributed.initialize(F.coordinator, F.num_processes, F.process_id)  # before any device is touched
        return train_and_evaluate(config, F.workdir or os.path.join("runs", stem), log=cli.log,
                                  should_stop=cli.STOP)["interrupted"]

    cli.run(run, __doc__, takes_config=True, stoppable=True)


if __name__ == "__main__":
    main()
