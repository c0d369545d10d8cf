"""Train an LSTM language model (d2l's ``train_ch8``), from a config file.

  python -m lstm_jax.train --config experiments/scratch.py
  python -m lstm_jax.train --config experiments/concise.py --config.num_epochs=5
  python -m lstm_jax.train --config experiments/scratch.py --workdir runs/try1 \\
      --config.num_hiddens=512 --config.learning_rate=2.0 --config.data.path=my.txt

Any field of the config can be overridden with --config.<field>=<value>
(README.md lists them all; misspelled fields are refused). Outputs go to
--workdir (default runs/<config file name>): metrics.jsonl (one line per
epoch), perplexity.png, config.json and vocab.json.

A run is a function of its config: the seed fixes the initial weights and
every epoch's minibatches, and on CPU the numbers repeat bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax import configs, data, predict, reporting
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

    def block_sizes(self) -> list[int]:
        """How an epoch is cut into compiled calls: equal blocks and one remainder."""
        n, per_call = self.batches_per_epoch, self.config.batches_per_call
        return [per_call] * (n // per_call) + ([n % per_call] if n % per_call else [])

    def continuations(self, params, prefixes=None) -> list[str]:
        c = self.config
        return [predict.continue_text(self.model, params, self.corpus.vocab, p, c.num_preds)
                for p in (prefixes if prefixes is not None else c.prefixes)]


def device_summary() -> str:
    devices = jax.devices()
    kind = devices[0].platform
    return kind if len(devices) == 1 else f"{len(devices)} x {kind}"


def compile_steps(exp: Experiment, ts: TrainState):
    """Ahead-of-time compile the block function for each block length of an epoch.

    Returns the compiled callables keyed by length and the seconds spent, so
    compile time is reported on its own instead of inflating epoch 1.
    """
    c = exp.config
    fn = jax.jit(functools.partial(train_block, exp.model, exp.optimizer, c.data.random_iter),
                 donate_argnums=(0, 1))
    state = exp.model.initial_state(c.batch_size)
    compiled, start = {}, time.perf_counter()
    for n in sorted(set(exp.block_sizes())):
        XY = jax.ShapeDtypeStruct((n, c.batch_size, c.num_steps), jnp.int32)
        compiled[n] = fn.lower(ts, state, XY, XY).compile()
    return compiled, time.perf_counter() - start


def train_epoch(exp: Experiment, compiled: dict, ts: TrainState, epoch: int):
    """One epoch; returns the new train state and per-minibatch losses and grad norms."""
    batches = exp.epoch_batches(epoch)
    state = exp.model.initial_state(exp.config.batch_size)  # d2l: fresh state every epoch
    outs, start = [], 0
    for n in exp.block_sizes():
        ts, state, metrics = compiled[n](ts, state, batches.X[start:start + n], batches.Y[start:start + n])
        outs.append(metrics)
        start += n
    outs = jax.device_get(outs)  # the epoch's one host sync
    return ts, {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train as the config says, writing metrics and plots into ``workdir``.

    Returns a summary (final perplexities, speeds, compile time, continuations).
    """
    exp = Experiment.from_config(config)
    c = exp.config
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(c.to_json(indent=2))
    with open(os.path.join(workdir, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(exp.corpus.vocab.to_json())
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    writer = reporting.MetricsWriter(metrics_path)

    device = device_summary()
    tokens_per_epoch = exp.batches_per_epoch * c.batch_size * c.num_steps
    log(f"devices: {device}; model {c.model}, {c.num_hiddens} hidden, vocab {len(exp.corpus.vocab)}, "
        f"{len(exp.corpus.train)} training tokens ({exp.batches_per_epoch} minibatches of "
        f"{c.batch_size}x{c.num_steps} per epoch), corpus {exp.corpus.source}")

    ts = exp.init_train_state()
    compiled, compile_s = compile_steps(exp, ts)
    log(f"compiled the train step in {compile_s:.2f} s")
    evaluate = jax.jit(functools.partial(eval_loss, exp.model))
    heldout = heldout_streams(exp.corpus.val, c.batch_size) if c.data.num_val else None

    records = []
    epochs = range(c.num_epochs)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(epochs, desc="epochs", unit="epoch", file=sys.stderr, disable=None)
        epochs = bar
    train_start = time.perf_counter()
    for epoch in epochs:
        t0 = time.perf_counter()
        ts, m = train_epoch(exp, compiled, ts, epoch)
        seconds = time.perf_counter() - t0
        if not np.all(np.isfinite(m["loss"])):
            bad = m["loss"][~np.isfinite(m["loss"])][0]
            raise UserError(
                f"the training loss became {bad} in epoch {epoch + 1} (learning_rate="
                f"{c.learning_rate}, grad_clip={c.grad_clip}); training stopped. "
                f"Metrics up to epoch {epoch} are in {metrics_path}; try a smaller learning rate")
        record = {"epoch": epoch + 1, "train_ppl": perplexity(m["loss"].mean()),
                  "tokens_per_sec": tokens_per_epoch / seconds, "epoch_time_s": seconds,
                  "grad_norm": float(m["grad_norm"].mean()), "step": int(ts.step)}
        if heldout is not None:
            record["val_ppl"] = perplexity(evaluate(ts.params, heldout.X, heldout.Y))
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
    train_s = time.perf_counter() - train_start
    if bar is not None:
        bar.close()

    reporting.plot_perplexity(records, os.path.join(workdir, "perplexity.png"),
                              f"{c.model} LSTM, {c.num_hiddens} hidden, lr {c.learning_rate}")
    final = records[-1]
    speeds = [r["tokens_per_sec"] for r in records]
    summary = {
        "final_train_ppl": final["train_ppl"], "final_val_ppl": final.get("val_ppl"),
        "tokens_per_sec_median": float(np.median(speeds)), "compile_s": compile_s,
        "train_s": train_s, "device": device, "epochs": len(records),
        "continuations": exp.continuations(ts.params),
    }
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    log(f"perplexity {final['train_ppl']:.1f}, {summary['tokens_per_sec_median']:.0f} tokens/sec "
        f"on {device} (median over epochs; compile {compile_s:.1f} s, training {train_s:.1f} s)")
    for text in summary["continuations"]:
        log(text)
    log(f"outputs in {workdir}: metrics.jsonl, perplexity.png, summary.json")
    summary["train_state"] = ts
    return summary


# --------------------------------------------------------------------------
# The command line (flags are defined only when run as a program, so that
# importing this module from tests or other tools never touches absl FLAGS).
# --------------------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad overrides turned into one line naming the key."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).splitlines()[0])
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown config field
        lines = str(e).strip("'\"").replace("\\n", "\n").replace("\\'", "'").splitlines()
        key = lines[0].strip("'\" ")
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        flag = next((o for o in overrides if o.split(".")[-1] == key), f"--config.{key}")
        hint = f" ({lines[1].strip()})" if len(lines) > 1 else ""
        _fail(f"{flag}: the config has no field '{flag[len('--config.'):]}'{hint}")
    return []


def main() -> None:
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Config file (experiments/*.py); override fields with --config.<field>=<value>.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Where outputs go (default: runs/<config file name>).")
    flags.mark_flag_as_required("config")

    def run(argv):
        logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing out of the output
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]}; options look like --config.<field>=<value>")
        try:
            config = config_flag.value
            config.num_epochs  # a bad config path is only reported on first use
        except (OSError, ImportError, AttributeError, SyntaxError) as e:
            _fail(f"cannot load config file {flags.FLAGS['config'].config_filename}: {e}")
        stem = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
        workdir = flags.FLAGS.workdir or os.path.join("runs", stem)
        try:
            train_and_evaluate(config, workdir, log=_log)
        except UserError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted")

    app.run(run, flags_parser=_parse_flags)


def _log(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


if __name__ == "__main__":
    main()
