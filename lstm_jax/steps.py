"""The pure functions training and evaluation are made of: one update, a block of them, a scored split.

Nothing here touches files, flags or the clock; :mod:`lstm_jax.experiment`
compiles these and :mod:`lstm_jax.train` runs them.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax.lstm import LSTMState
from lstm_jax.models import LanguageModel


class TrainState(NamedTuple):
    step: jax.Array  # minibatch updates so far (int32 scalar)
    params: Any
    opt_state: optax.OptState


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """Clipping (d2l's ``grad_clipping``), then SGD, Adam or AdamW under the schedule.

    The (peak) learning rate is an injected hyperparameter: it lives in the
    optimizer state, so trials that differ only in learning rate share one
    program. The schedule's shape (warm-up, cosine over ``total_steps``) is
    part of the program.
    """
    c = config
    warmup, cosine = c.warmup_steps, c.lr_schedule == "cosine"

    def optimizer(learning_rate):
        def rate(count):  # linear warm-up from 0, then constant or a cosine to 0 at total_steps
            count = jnp.asarray(count, jnp.float32)
            scale = jnp.minimum(1.0, count / warmup) if warmup else 1.0
            if cosine:
                progress = jnp.clip((count - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
                scale = scale * 0.5 * (1 + jnp.cos(jnp.pi * progress))
            return learning_rate * scale

        sched = rate if (warmup or cosine) else learning_rate
        if c.optimizer == "sgd":
            return optax.sgd(sched)
        if c.optimizer == "adam":
            return optax.adam(sched)
        return optax.adamw(sched, weight_decay=c.weight_decay)

    return optax.chain(optax.clip_by_global_norm(c.grad_clip),
                       optax.inject_hyperparams(optimizer)(learning_rate=c.learning_rate))


def init_train_state(model: LanguageModel, optimizer, key: jax.Array) -> TrainState:
    params = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def loss_fn(model: LanguageModel, params, state: LSTMState, X_BxT, Y_BxT, key=None):
    """Mean softmax cross-entropy over all batch x steps targets, and the new state."""
    logits_BxTxV, state = model.apply(params, state, X_BxT, key)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, Y_BxT).mean(), state


def train_step(model: LanguageModel, optimizer, ts: TrainState, state: LSTMState, X_BxT, Y_BxT,
               key: jax.Array):
    """Forward, loss, gradient, clipping and update. Dropout's key is ``key`` folded with the step."""
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model), has_aux=True)
    (loss, state), grads = grad_fn(ts.params, state, X_BxT, Y_BxT, jax.random.fold_in(key, ts.step))
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = optax.apply_updates(ts.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(ts.step + 1, params, opt_state), state, metrics


def train_block(model: LanguageModel, optimizer, random_iter: bool, ts: TrainState, state: LSTMState,
                X_NxBxT, Y_NxBxT, n, key):
    """The first ``n`` of N minibatches as one loop: one compiled program for any n <= N.

    As d2l's ``train_epoch_ch8``: with sequential partitioning the hidden state
    flows from one minibatch into the next, detached (gradients stop at the
    minibatch boundary); with random partitioning it restarts from zeros.
    Returns per-minibatch metrics, (N,) each; entries past n are zero.
    """
    N, B = X_NxBxT.shape[:2]

    def body(i, carry):
        ts, state, metrics = carry
        if random_iter:
            state = model.initial_state(B)
        ts, state, m = train_step(model, optimizer, ts, jax.lax.stop_gradient(state), X_NxBxT[i], Y_NxBxT[i], key)
        return ts, state, {k: metrics[k].at[i].set(m[k]) for k in metrics}

    metrics = {"loss": jnp.zeros(N, jnp.float32), "grad_norm": jnp.zeros(N, jnp.float32)}
    return jax.lax.fori_loop(0, n, body, (ts, state, metrics))


def eval_loss_sum(model: LanguageModel, params, X_NxBxC, Y_NxBxC, mask_NxBxC):
    """Summed cross-entropy of every unmasked target, each stream's state carried through its chunks."""
    def body(state, xym):
        x, y, m = xym
        logits, state = model.apply(params, state, x)
        return state, jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * m)

    _, sums = jax.lax.scan(body, model.initial_state(X_NxBxC.shape[1]), (X_NxBxC, Y_NxBxC, mask_NxBxC))
    return sums.sum()


def perplexity(mean_loss) -> float:
    """exp(mean cross-entropy); a finite but huge loss gives inf, not OverflowError."""
    mean_loss = float(mean_loss)
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def scores(loss_sum: float, num_tokens: int, split: str) -> dict:
    """``<split>_loss`` (nats/token), ``_bpc`` (bits/token) and ``_ppl`` of a summed loss."""
    loss = float(loss_sum) / num_tokens
    return {f"{split}_loss": loss, f"{split}_bpc": loss / math.log(2), f"{split}_ppl": perplexity(loss)}


def check_finite(losses: np.ndarray, epoch: int, config) -> str | None:
    """Why training must stop (a loss that is nan or inf), or None."""
    bad = losses[~np.isfinite(losses)]
    if not bad.size:
        return None
    return (f"the training loss became {bad[0]} in epoch {epoch + 1} (learning_rate={config.learning_rate}, "
            f"grad_clip={config.grad_clip})")


def train_record(epoch: int, step: int, elapsed_s: float, losses, grad_norms, tokens: int,
                 seconds: float) -> dict:
    """One metrics.jsonl line's training part: the minibatches since the last line."""
    loss = float(np.mean(losses))
    return {"epoch": epoch + 1, "step": step, "elapsed_s": elapsed_s, "train_loss": loss,
            "train_ppl": perplexity(loss), "grad_norm": float(np.mean(grad_norms)),
            "tokens_per_sec": tokens / seconds if seconds > 0 else None}
