"""Train an LSTM language model (d2l's ``train_ch8``), from a config file.

  python -m lstm_jax.train --config experiments/scratch.py
  python -m lstm_jax.train --config experiments/concise.py --config.num_epochs=5
  python -m lstm_jax.train --config experiments/scratch.py --workdir runs/try1 \\
      --config.num_hiddens=512 --config.learning_rate=2.0 --config.data.path=my.txt

Any field of the config can be overridden with --config.<field>=<value>
(README.md lists them all; misspelled fields are refused). Outputs go to
--workdir (default runs/<config file name>): metrics.jsonl (one line per
epoch), perplexity.png, config.json, vocab.json and checkpoints/. A workdir
that holds checkpoints is resumed; Ctrl-C saves a checkpoint and stops.
Continue text from a run with python -m lstm_jax.predict --workdir DIR.

A run is a function of its config: the seed fixes the initial weights and
every epoch's minibatches, and on CPU the numbers repeat bit for bit.

Every device JAX sees is used (data parallel, lstm_jax/distributed.py); with
several processes (hosts), run the same command in each, adding

  --coordinator=HOST0:PORT --num_processes=N --process_id=I
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax import checkpoint, configs, data, distributed, generate, reporting
from lstm_jax.errors import UserError
from lstm_jax.lstm import LSTMState
from lstm_jax.models import LanguageModel, make_model


# --------------------------------------------------------------------------
# The functional core: state, loss, one update, a block of updates.
# --------------------------------------------------------------------------


class TrainState(NamedTuple):
    step: jax.Array  # minibatch updates so far (int32 scalar)
    params: Any
    opt_state: optax.OptState


def make_optimizer(learning_rate: float, grad_clip: float) -> optax.GradientTransformation:
    """d2l's ``grad_clipping(net, theta)`` then plain SGD.

    The learning rate is an injected hyperparameter (it lives in the optimizer
    state), so trials that differ only in learning rate share one program.
    """
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate),
    )


def init_train_state(model: LanguageModel, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
    params = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def loss_fn(model: LanguageModel, params, state: LSTMState, X_BxT, Y_BxT):
    """Mean softmax cross-entropy over all batch x steps targets, and the new state."""
    logits_BxTxV, state = model.apply(params, state, X_BxT)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, Y_BxT).mean()
    return loss, state


def train_step(model: LanguageModel, optimizer: optax.GradientTransformation,
               ts: TrainState, state: LSTMState, X_BxT, Y_BxT):
    """Forward, loss, gradient, clipping and update. Returns the new state too."""
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model), has_aux=True)
    (loss, state), grads = grad_fn(ts.params, state, X_BxT, Y_BxT)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = optax.apply_updates(ts.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(ts.step + 1, params, opt_state), state, metrics


def train_block(model: LanguageModel, optimizer: optax.GradientTransformation, random_iter: bool,
                ts: TrainState, state: LSTMState, X_NxBxT, Y_NxBxT):
    """N consecutive minibatches as one ``lax.scan``: one compiled call, no host round trips.

    As d2l's ``train_epoch_ch8``: with sequential partitioning the hidden state
    flows from one minibatch into the next, detached (gradients stop at the
    minibatch boundary); with random partitioning it restarts from zeros.
    """
    def body(carry, XY):
        ts, state = carry
        if random_iter:
            state = model.initial_state(XY[0].shape[0])
        ts, state, metrics = train_step(model, optimizer, ts, jax.lax.stop_gradient(state), *XY)
        return (ts, state), metrics

    (ts, state), metrics = jax.lax.scan(body, (ts, state), (X_NxBxT, Y_NxBxT))
    return ts, state, metrics


def eval_loss(model: LanguageModel, params, X_BxT, Y_BxT):
    """Mean held-out cross-entropy, each of the B streams starting from zeros."""
    return loss_fn(model, params, model.initial_state(X_BxT.shape[0]), X_BxT, Y_BxT)[0]


def perplexity(mean_loss) -> float:
    """exp(mean cross-entropy); a finite but huge loss gives inf, not OverflowError."""
    mean_loss = float(mean_loss)
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def heldout_streams(ids: np.ndarray, batch_size: int) -> data.Batches:
    """The held-out tokens as ``batch_size`` parallel streams, (B, L) inputs and targets."""
    width = (len(ids) - 1) // batch_size
    if width < 1:
        raise UserError(f"config.data.num_val={len(ids)} is too small for batch_size={batch_size}: "
                        f"use at least {batch_size + 1} held-out tokens")
    X = ids[:width * batch_size].reshape(batch_size, width)
    Y = ids[1:width * batch_size + 1].reshape(batch_size, width)
    return data.Batches(X, Y)


# --------------------------------------------------------------------------
# Putting a run together.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
    """Everything a run derives from its config before the first update."""

    config: ml_collections.ConfigDict
    corpus: data.Corpus
    model: LanguageModel
    optimizer: optax.GradientTransformation
    batches_per_epoch: int
    shardings: distributed.Shardings = None  # default: data parallel over all devices (one is fine)

    def __post_init__(self):
        if self.shardings is None:
            self.shardings = distributed.Shardings(distributed.make_mesh())
        distributed.check_batch_size(self.config.batch_size, self.shardings.num_devices)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
        configs.validate(config)
        d = config.data
        path = data.resolve_corpus(d.path, d.url, d.sha1, os.path.expanduser(d.cache_dir))
        corpus = data.load_corpus(path, d.token, d.max_tokens, d.num_val, d.min_freq)
        data.check_enough(len(corpus.train), config.batch_size, config.num_steps, d.random_iter,
                          f"the training text of {path}")
        n = data.num_batches(len(corpus.train), config.batch_size, config.num_steps, d.random_iter)
        model = make_model(config.model, len(corpus.vocab), config.num_hiddens, config.dtype,
                           config.lstm_impl)
        optimizer = make_optimizer(config.learning_rate, config.grad_clip)
        return cls(config, corpus, model, optimizer, n)

    def epoch_batches(self, epoch: int) -> data.Batches:
        """Epoch ``epoch``'s minibatches: a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.config.seed, epoch])
        c = self.config
        return data.epoch_batches(self.corpus.train, c.batch_size, c.num_steps,
                                  c.data.random_iter, rng)

    def init_train_state(self) -> TrainState:
        return init_train_state(self.model, self.optimizer, jax.random.key(self.config.seed))

    def block_sizes(self, num_batches: int | None = None) -> list[int]:
        """How (the rest of) an epoch is cut into compiled calls: equal blocks, one remainder.

        Cutting greedily from the front means the rest of an epoch resumed at a
        block boundary is cut exactly as it would have been.
        """
        n = self.batches_per_epoch if num_batches is None else num_batches
        per_call = self.config.batches_per_call
        return [per_call] * (n // per_call) + ([n % per_call] if n % per_call else [])

    def abstract_arrays(self) -> dict:
        """What a checkpoint holds, placed as training wants it (restores straight onto the mesh)."""
        shapes = abstract_arrays(self.model, self.optimizer, self.config.batch_size)
        sh = self.shardings
        with_sharding = lambda sharding: (lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding))
        return {"train_state": jax.tree.map(with_sharding(sh.replicated), shapes["train_state"]),
                "lstm_state": jax.tree.map(with_sharding(sh.rows), shapes["lstm_state"])}

    def continuations(self, params, prefixes=None) -> list[str]:
        c = self.config
        params = distributed.to_host(params)  # batch 1: every process on its own first device
        return [generate.continue_text(self.model, params, self.corpus.vocab, p, c.num_preds)
                for p in (prefixes if prefixes is not None else c.prefixes)]


def abstract_arrays(model: LanguageModel, optimizer: optax.GradientTransformation,
                    batch_size: int) -> dict:
    """Shapes and dtypes of the arrays a checkpoint holds, for restoring it."""
    return jax.eval_shape(lambda: {
        "train_state": init_train_state(model, optimizer, jax.random.key(0)),
        "lstm_state": model.initial_state(batch_size)})


def device_summary() -> str:
    """``cpu``, ``4 x cpu``, ``gpu (NVIDIA H200)``; ``, N processes`` when multi-process."""
    return distributed.describe()


class CompiledBlocks:
    """``train_block`` compiled ahead of time, one executable per block length.

    Compiling before the first step keeps compile time out of epoch 1's speed;
    ``compile_s`` adds up all compiling, including lengths first met later
    (the rest of an epoch resumed with a different ``batches_per_call``). The
    batch rows (and hidden-state rows) are split over the mesh's devices and
    the train state replicated; each callable places its arguments so (host
    numpy is fine).
    """

    def __init__(self, exp: Experiment, ts: TrainState):
        c, sh = exp.config, exp.shardings
        self._fn = jax.jit(functools.partial(train_block, exp.model, exp.optimizer, c.data.random_iter),
                           in_shardings=(sh.replicated, sh.rows, sh.blocks, sh.blocks),
                           out_shardings=(sh.replicated, sh.rows, sh.replicated), donate_argnums=(0, 1))
        self._ts = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), ts)
        self._state = jax.eval_shape(lambda: exp.model.initial_state(c.batch_size))
        self._shape = (c.batch_size, c.num_steps)
        self._compiled = {}
        self.compile_s = 0.0

    def __getitem__(self, n: int):
        if n not in self._compiled:
            start = time.perf_counter()
            XY = jax.ShapeDtypeStruct((n, *self._shape), jnp.int32)
            self._compiled[n] = distributed.placed(self._fn.lower(self._ts, self._state, XY, XY).compile())
            self.compile_s += time.perf_counter() - start
        return self._compiled[n]


def compile_steps(exp: Experiment, ts: TrainState):
    """Compile every block length an epoch uses; returns (compiled blocks, seconds)."""
    compiled = CompiledBlocks(exp, ts)
    for n in set(exp.block_sizes()):
        compiled[n]
    return compiled, compiled.compile_s


def run_blocks(exp: Experiment, compiled, ts: TrainState, state: LSTMState,
               batches: data.Batches, done: int = 0):
    """Train on ``batches`` from minibatch ``done`` on, one compiled call per block.

    Yields ``(minibatches done, ts, state, metrics)`` after each call, so the
    caller can stop (and checkpoint) between calls. Nothing here waits for
    the device.
    """
    for n in exp.block_sizes(len(batches.X) - done):
        ts, state, metrics = compiled[n](ts, state, batches.X[done:done + n], batches.Y[done:done + n])
        done += n
        yield done, ts, state, metrics


def stack_metrics(outs: list[dict]) -> dict:
    outs = jax.device_get(outs)
    return {k: np.concatenate([np.asarray(o[k]).reshape(-1) for o in outs]) for k in outs[0]}


def train_epoch(exp: Experiment, compiled, ts: TrainState, epoch: int):
    """One whole epoch; returns the new train state and per-minibatch losses and grad norms."""
    state = exp.model.initial_state(exp.config.batch_size)  # d2l: fresh state every epoch
    outs = []
    for _, ts, state, metrics in run_blocks(exp, compiled, ts, state, exp.epoch_batches(epoch)):
        outs.append(metrics)
    return ts, stack_metrics(outs)  # the epoch's one host sync


class _Resume(NamedTuple):
    ts: TrainState
    epoch: int  # the epoch to continue (0-based)
    done: int  # its minibatches already trained
    state: LSTMState  # the LSTM state carried into minibatch ``done``
    partial: list  # that epoch's metrics so far, as one block
    step: int


def _open_checkpoints(exp: Experiment, workdir: str) -> checkpoint.Checkpoints:
    """Every process opens the checkpoints (orbax saves collectively); process 0 owns the files."""
    os.makedirs(workdir, exist_ok=True)
    if exp.config.overwrite and distributed.is_main_process():
        shutil.rmtree(checkpoint.checkpoint_dir(workdir), ignore_errors=True)
    return checkpoint.Checkpoints(workdir, exp.config.max_to_keep)


def _resume_point(exp: Experiment, workdir: str, ckpts: checkpoint.Checkpoints, log) -> _Resume | None:
    """Where to start: None for a fresh run, else the latest checkpoint, once shown compatible."""
    c = exp.config
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    step = ckpts.latest_step()
    is_main = distributed.is_main_process()
    if step is None:
        if is_main and os.path.exists(metrics_path):
            os.remove(metrics_path)
        return None
    where = os.path.join(ckpts.directory, str(step))
    meta, saved_config, vocab = ckpts.restore_json(step)
    diffs = checkpoint.config_differences(saved_config, c)
    if diffs:
        raise UserError(f"{workdir} holds a run with a different config ({'; '.join(diffs)}); "
                        "resume with the config it was trained with, use another --workdir, "
                        "or start over with --config.overwrite=True")
    if vocab != exp.corpus.vocab:
        raise UserError(f"checkpoint {where} was trained with a different vocabulary than "
                        f"{exp.corpus.source} gives; use the same corpus, another --workdir, "
                        "or --config.overwrite=True")
    r = ckpts.restore(step, exp.abstract_arrays())
    partial = [{k: np.asarray(v, np.float32) for k, v in meta["partial"].items()}] if meta["batch"] else []
    if is_main:
        reporting.MetricsWriter(metrics_path).truncate_after(meta["epoch"])
    at = (f"epoch {meta['epoch'] + 1}, minibatch {meta['batch'] + 1}" if meta["batch"]
          else f"the end of epoch {meta['epoch']}")
    log(f"resuming from checkpoint {where} ({at})")
    return _Resume(r.arrays["train_state"], meta["epoch"], meta["batch"], r.arrays["lstm_state"],
                   partial, step)


def _save(ckpts: checkpoint.Checkpoints, exp: Experiment, ts: TrainState, state: LSTMState,
          epoch: int, done: int, outs: list) -> int:
    partial = {k: v.tolist() for k, v in stack_metrics(outs).items()} if done else {}
    step = int(ts.step)
    ckpts.save(step, {"train_state": ts, "lstm_state": state},
               {"epoch": epoch, "batch": done, "partial": partial}, exp.config, exp.corpus.vocab)
    return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = print, progress: bool = True,
                       should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train as the config says, writing metrics, plots and checkpoints into ``workdir``.

    A workdir that already holds checkpoints is resumed from the latest one.
    ``should_stop`` is polled between compiled calls: when it turns true the
    run saves a checkpoint where it stands and returns (``interrupted`` set).
    Returns a summary (final perplexities, speeds, compile time, continuations).
    """
    exp = Experiment.from_config(config)
    if not distributed.is_main_process():  # every process trains; only process 0 writes or logs
        log, progress = (lambda message: None), False
    c = exp.config
    log(f"devices: {device_summary()}; model {c.model}, {c.num_hiddens} hidden, vocab "
        f"{len(exp.corpus.vocab)}, {len(exp.corpus.train)} training tokens ({exp.batches_per_epoch} "
        f"minibatches of {c.batch_size}x{c.num_steps} per epoch), corpus {exp.corpus.source}")
    ckpts = _open_checkpoints(exp, workdir)
    try:
        resume = _resume_point(exp, workdir, ckpts, log)
        return _train(exp, workdir, ckpts, resume, log, progress, should_stop)
    finally:
        ckpts.close()


def _train(exp, workdir, ckpts, resume, log, progress, should_stop) -> dict:
    c = exp.config
    is_main = distributed.is_main_process()
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(c.to_json(indent=2))
        with open(os.path.join(workdir, "vocab.json"), "w", encoding="utf-8") as f:
            f.write(exp.corpus.vocab.to_json())
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    writer = reporting.MetricsWriter(metrics_path)

    device = device_summary()

    ts = resume.ts if resume else exp.init_train_state()
    compiled, compile_s = compile_steps(exp, ts)
    log(f"compiled the train step in {compile_s:.2f} s")
    sh = exp.shardings
    eval_in = (sh.replicated, sh.rows, sh.rows)  # held-out streams are split by rows, as a minibatch
    evaluate = distributed.placed(jax.jit(functools.partial(eval_loss, exp.model), in_shardings=eval_in,
                                          out_shardings=sh.replicated), eval_in)
    heldout = heldout_streams(exp.corpus.val, c.batch_size) if c.data.num_val else None
    tokens_per_batch = c.batch_size * c.num_steps

    records = reporting.read_metrics(metrics_path)
    first_epoch = resume.epoch if resume else 0
    last_saved = resume.step if resume else None
    bar = None
    epochs = range(first_epoch, c.num_epochs)
    if progress:
        from tqdm import tqdm
        bar = tqdm(epochs, desc="epochs", unit="epoch", file=sys.stderr, disable=None,
                   initial=first_epoch, total=c.num_epochs)
        epochs = bar
    interrupted = False
    train_start = time.perf_counter()
    for epoch in epochs:
        t0 = time.perf_counter()
        if resume and epoch == resume.epoch and resume.done:
            done0, state, outs = resume.done, resume.state, list(resume.partial)
        else:
            done0, state, outs = 0, exp.model.initial_state(c.batch_size), []
        done = done0
        for done, ts, state, metrics in run_blocks(exp, compiled, ts, state, exp.epoch_batches(epoch), done0):
            outs.append(metrics)
            if should_stop() and done < exp.batches_per_epoch:
                last_saved = _save(ckpts, exp, ts, state, epoch, done, outs)
                log(f"stopped in epoch {epoch + 1} after minibatch {done}: saved checkpoint "
                    f"{ckpts.directory}/{last_saved}; run the same command again to resume")
                interrupted = True
                break
        if interrupted:
            break
        m = stack_metrics(outs)  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        if not np.all(np.isfinite(m["loss"])):
            bad = m["loss"][~np.isfinite(m["loss"])][0]
            kept = f"; the last checkpoint is {ckpts.directory}/{last_saved}" if last_saved is not None else ""
            raise UserError(
                f"the training loss became {bad} in epoch {epoch + 1} (learning_rate="
                f"{c.learning_rate}, grad_clip={c.grad_clip}); training stopped. "
                f"Metrics up to epoch {epoch} are in {metrics_path}{kept}; try a smaller learning rate")
        record = {"epoch": epoch + 1, "train_ppl": perplexity(m["loss"].mean()),
                  "tokens_per_sec": (done - done0) * tokens_per_batch / seconds, "epoch_time_s": seconds,
                  "grad_norm": float(m["grad_norm"].mean()), "step": int(ts.step)}
        if heldout is not None:
            record["val_ppl"] = perplexity(evaluate(ts.params, heldout.X, heldout.Y))
        if is_main:
            writer.write(record)
        records.append(record)
        if bar is not None:
            bar.set_postfix(ppl=f"{record['train_ppl']:.2f}")
        if (epoch + 1) % c.log_every == 0 or epoch + 1 == c.num_epochs:
            val = f", held-out perplexity {record['val_ppl']:.1f}" if heldout is not None else ""
            log(f"epoch {epoch + 1}: perplexity {record['train_ppl']:.1f}{val}, "
                f"{record['tokens_per_sec']:.0f} tokens/sec on {device}")
            for text in exp.continuations(ts.params):
                log(f"  {text}")
        stop = should_stop()
        if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 == c.num_epochs or stop:
            last_saved = _save(ckpts, exp, ts, state, epoch + 1, 0, [])
        if stop and epoch + 1 < c.num_epochs:
            log(f"stopped after epoch {epoch + 1}: saved checkpoint {ckpts.directory}/{last_saved}; "
                "run the same command again to resume")
            interrupted = True
            break
    train_s = time.perf_counter() - train_start
    if bar is not None:
        bar.close()

    if records and is_main:
        reporting.plot_perplexity(records, os.path.join(workdir, "perplexity.png"),
                                  f"{c.model} LSTM, {c.num_hiddens} hidden, lr {c.learning_rate}")
    final = records[-1] if records else {}
    speeds = [r["tokens_per_sec"] for r in records]
    summary = {
        "final_train_ppl": final.get("train_ppl"), "final_val_ppl": final.get("val_ppl"),
        "tokens_per_sec_median": float(np.median(speeds)) if speeds else None,
        "compile_s": compiled.compile_s, "train_s": train_s, "device": device,
        "epochs": len(records), "interrupted": interrupted, "checkpoint_step": last_saved,
        "continuations": exp.continuations(ts.params),
    }
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    if not interrupted and records:
        if first_epoch >= c.num_epochs:
            log(f"already trained for {c.num_epochs} epochs (checkpoint {last_saved}); "
                "raise --config.num_epochs to train on")
        log(f"perplexity {final['train_ppl']:.1f}, {summary['tokens_per_sec_median']:.0f} tokens/sec "
            f"on {device} (median over epochs; compile {compiled.compile_s:.1f} s, training {train_s:.1f} s)")
        for text in summary["continuations"]:
            log(text)
        log(f"outputs in {workdir}: metrics.jsonl, perplexity.png, summary.json, checkpoints/")
    summary["train_state"] = ts
    return summary


# --------------------------------------------------------------------------
# The command line (flags are defined only when run as a program, so that
# importing this module from tests or other tools never touches absl FLAGS).
# --------------------------------------------------------------------------


def main() -> None:
    global __doc__
    from absl import app, flags
    from ml_collections import config_flags

    from lstm_jax import cli

    __doc__ += cli.config_fields_help()

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Config file (experiments/*.py); override fields with --config.<field>=<value>.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Where outputs go (default: runs/<config file name>).")
    flags.DEFINE_string("coordinator", None, "Multi-process runs: process 0's HOST:PORT, the same for "
                        "every process ('auto': let JAX detect Slurm, Open MPI, ...). "
                        "Default: $JAX_COORDINATOR_ADDRESS, else a single-process run.")
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes "
                         "(default: $JAX_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's rank, 0..N-1; "
                         "0 writes the outputs (default: $JAX_PROCESS_ID).")
    flags.mark_flag_as_required("config")

    def run(argv):
        cli.setup()
        if len(argv) > 1:
            cli.fail(f"unexpected arguments {argv[1:]}; options look like --config.<field>=<value>")
        config, stem = cli.load_config(config_flag)
        workdir = flags.FLAGS.workdir or os.path.join("runs", stem)
        stop = cli.StopRequest(cli.log).install()
        try:
            distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                                   flags.FLAGS.process_id,  # before anything touches a device
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
            train_and_evaluate(config, workdir, log=cli.log, should_stop=stop)
        except UserError as e:
            cli.fail(str(e))
        if stop.signum is not None:
            sys.exit(128 + stop.signum)

    app.run(run, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
