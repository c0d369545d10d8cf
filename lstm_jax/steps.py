"""The pure functions training and evaluation are made of: one update, a block of them, a scored split.

Nothing here touches files, flags or the clock. The compiled programs are module-level ``jax.jit``s
whose static arguments are the model and optimizer *by value* (small frozen dataclasses of config
fields): runs in one process that describe the same model share one program, with no cache of ours.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax.cells.lstm import LSTMState
from lstm_jax.models import LanguageModel


class TrainState(NamedTuple):
    step: jax.Array  # minibatch updates so far (int32 scalar)
    params: Any
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Clipping (d2l's ``grad_clipping``), then SGD, Adam or AdamW under the schedule, by value.

    The (peak) learning rate is an injected hyperparameter: it lives in the optimizer state, not in the
    program, so it takes no part in comparisons (runs that differ only in it share one compiled
    program). The schedule's shape (warm-up, cosine over ``total_steps``) is part of the program.
    """

    name: str
    grad_clip: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    cosine: bool = False
    total_steps: int = 1
    decay: float = 1.0  # times this every decay_every updates, after decay_after of those periods
    decay_every: int = 0
    decay_after: int = 0
    length_scaled: bool = False  # variable sequence lengths: the rate times length / num_steps (AWD-LSTM)
    learning_rate: float = dataclasses.field(default=1.0, compare=False)

    def transform(self) -> optax.GradientTransformation:
        warmup, cosine, total, every = self.warmup_steps, self.cosine, self.total_steps, self.decay_every

        def optimizer(learning_rate):
            def rate(count):  # linear warm-up from 0, then constant, a cosine to 0 at total_steps, or steps
                scale = jnp.minimum(1.0, jnp.asarray(count, jnp.float32) / warmup) if warmup else 1.0
                if cosine:
                    progress = jnp.clip((count - warmup) / max(total - warmup, 1), 0.0, 1.0)
                    scale = scale * 0.5 * (1 + jnp.cos(jnp.pi * progress))
                if every:  # Zaremba et al.: epoch e (from 0) runs at decay ** max(e + 1 - decay_after, 0)
                    scale = scale * self.decay ** jnp.maximum(count // every + 1 - self.decay_after, 0)
                return learning_rate * scale

            sched = rate if (warmup or cosine or every) else learning_rate
            extra = {"weight_decay": self.weight_decay} if self.name == "adamw" else {}
            step = getattr(optax, "sgd" if self.name == "ntasgd" else self.name)(sched, **extra)  # sgd, adam(w)
            if self.weight_decay and self.name != "adamw":  # PyTorch's SGD / Adam weight_decay (AWD's wdecay)
                return optax.chain(optax.add_decayed_weights(self.weight_decay), step)
            return step

        return optax.chain(optax.clip_by_global_norm(self.grad_clip),
                           optax.inject_hyperparams(optimizer)(learning_rate=self.learning_rate),
                           *([length_scaling()] if self.length_scaled else []),
                           *([averaging()] if self.name == "ntasgd" else []))

    def init(self, params):
        return self.transform().init(params)

    def update(self, grads, opt_state, params, lr_scale=None):
        """``lr_scale``: the rate's factor for this update (only with ``length_scaled``)."""
        extra = {} if lr_scale is None else {"lr_scale": lr_scale}
        return self.transform().update(grads, opt_state, params, **extra)


def length_scaling() -> optax.GradientTransformationExtraArgs:
    """AWD-LSTM's rate for a minibatch of variable length, ``lr * length / num_steps``: the updates
    (weight decay's part included) times ``lr_scale``, before NT-ASGD's mean takes the new iterate."""
    def update(updates, state, params=None, *, lr_scale=1.0, **extra):
        del params, extra
        return jax.tree.map(lambda u: (u * lr_scale).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


class Averaging(NamedTuple):
    """NT-ASGD's (Merity et al. 2018) mean of the iterates since averaging began."""

    active: jax.Array  # bool: set by the training loop when validation stops improving
    count: jax.Array  # iterates averaged so far
    avg: Any  # their mean, shaped as the parameters


def averaging() -> optax.GradientTransformation:
    """The last link of NT-ASGD's chain: updates pass unchanged; once ``active``, each new iterate
    joins the mean (the first one is the mean, as PyTorch's ASGD with t0=0, lambd=0, AWD-LSTM's)."""
    def init(params):
        return Averaging(jnp.zeros((), bool), jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params):
        count = state.count + state.active.astype(jnp.int32)
        new = optax.apply_updates(params, updates)
        avg = jax.tree.map(lambda a, p: jnp.where(state.active, a + (p - a) / jnp.maximum(count, 1), a),
                           state.avg, new)
        return updates, Averaging(state.active, count, avg)

    return optax.GradientTransformation(init, update)


def eval_params(ts: TrainState):
    """The weights to evaluate, sample and keep as best: NT-ASGD's mean once it averages, else the iterate."""
    st = ts.opt_state[-1]
    if not isinstance(st, Averaging):
        return ts.params
    return jax.tree.map(lambda a, p: jnp.where(st.active, a, p), st.avg, ts.params)


def start_averaging(ts: TrainState) -> TrainState:
    *rest, st = ts.opt_state
    return ts._replace(opt_state=(*rest, st._replace(active=jnp.logical_or(st.active, True))))


def make_optimizer(c, total_steps: int, epoch_steps: int = 1) -> Optimizer:
    cosine, step = c.lr_schedule == "cosine", c.lr_schedule == "step"  # only these have a length
    return Optimizer(c.optimizer, float(c.grad_clip), float(c.weight_decay), int(c.warmup_steps),
                     cosine, int(total_steps) if cosine else 1, float(c.lr_decay) if step else 1.0,
                     int(epoch_steps) if step else 0, int(c.lr_decay_after) if step else 0,
                     bool(c.variable_bptt), float(c.learning_rate))


def init_train_state(model: LanguageModel, optimizer, key: jax.Array) -> TrainState:
    # Strongly typed, as every update leaves them (jnp.full(shape, 0.0) is weakly typed): else the
    # first update's program differs from the rest's, and compiles twice.
    params = jax.tree.map(lambda a: jnp.asarray(a, a.dtype), model.init(key))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def loss_fn(model: LanguageModel, params, state: LSTMState, X_BxT, Y_BxT, key=None):
    """Mean softmax cross-entropy over all batch x steps targets, and the new state."""
    logits_BxTxV, state = model.apply(params, state, X_BxT, key)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, Y_BxT).mean(), state


def objective(model: LanguageModel, params, state, X_BxT, Y_BxT, key=None):
    """What training minimizes: the mean cross-entropy, plus AWD-LSTM's activation regularizers on the
    last layer's outputs h (T, B, H) where the model has them, ``activation_reg * mean(dropout(h)^2)`` (AR)
    and ``temporal_reg * mean((h_t - h_{t-1})^2)`` (TAR); returns it and (state, cross-entropy)."""
    if not (model.activation_reg or model.temporal_reg):
        loss, state = loss_fn(model, params, state, X_BxT, Y_BxT, key)
        return loss, (state, loss)
    logits_BxTxV, state, (h, dropped) = model.apply(params, state, X_BxT, key, outputs=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, Y_BxT).mean()
    h, dropped = h.astype(jnp.float32), dropped.astype(jnp.float32)
    penalty = model.activation_reg * jnp.mean(dropped ** 2) + model.temporal_reg * jnp.mean((h[1:] - h[:-1]) ** 2)
    return loss + penalty, (state, loss)


def train_step(model: LanguageModel, optimizer, ts: TrainState, state: LSTMState, X_BxT, Y_BxT,
               key: jax.Array, lr_scale=None):
    """Forward, loss, gradient, clipping and update. Dropout's key is ``key`` folded with the step."""
    grad_fn = jax.value_and_grad(functools.partial(objective, model), has_aux=True)
    (_, (state, loss)), grads = grad_fn(ts.params, state, X_BxT, Y_BxT, jax.random.fold_in(key, ts.step))
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params, lr_scale)
    params = optax.apply_updates(ts.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(ts.step + 1, params, opt_state), state, metrics


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "random_iter", "shardings"),
                   donate_argnames=("ts", "state"))
def train_block(model: LanguageModel, optimizer: Optimizer, random_iter: bool, ts: TrainState, state: LSTMState,
                X_NxBxT, Y_NxBxT, n, key_data, lr_scale=None, shardings=None):
    """The first ``n`` of N minibatches as one loop: one compiled program for any n <= N (``n = 0``
    compiles it and changes nothing); returns per-minibatch metrics, (N,) each, zero past n.
    ``lr_scale``: the rate's factor for these minibatches (variable lengths, ``length_scaled``).

    As d2l's ``train_epoch_ch8``: with sequential partitioning the hidden state flows from one minibatch
    into the next, detached; with random partitioning it restarts from zeros. Dropout's key travels as
    raw data (``jax.random.key_data``), a host value every process can pass. ``shardings`` keeps the
    train state replicated and the state's rows split, so each call takes its inputs as the last left them.
    """
    N, B = X_NxBxT.shape[:2]
    key = jax.random.wrap_key_data(key_data)

    def body(i, carry):
        ts, state, metrics = carry
        if random_iter:
            state = model.initial_state(B)
        ts, state, m = train_step(model, optimizer, ts, jax.lax.stop_gradient(state), X_NxBxT[i], Y_NxBxT[i], key,
                                  lr_scale)
        return ts, state, {k: metrics[k].at[i].set(m[k]) for k in metrics}

    metrics = {"loss": jnp.zeros(N, jnp.float32), "grad_norm": jnp.zeros(N, jnp.float32)}
    ts, state, metrics = jax.lax.fori_loop(0, n, body, (ts, state, metrics))
    if shardings is not None:
        ts = jax.lax.with_sharding_constraint(ts, shardings.replicated)
        state = jax.lax.with_sharding_constraint(state, shardings.rows)
    return ts, state, metrics


@functools.partial(jax.jit, static_argnames="model")
def eval_loss_sum(model: LanguageModel, params, X_NxBxC, Y_NxBxC, mask_NxBxC, n=None):
    """Summed cross-entropy of every unmasked target of the first ``n`` chunks (default: all),
    each stream's state carried through its chunks (``n = 0`` only compiles)."""
    def body(i, carry):
        state, total = carry
        logits, state = model.apply(params, state, X_NxBxC[i])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, Y_NxBxC[i])
        return state, total + jnp.sum(loss * mask_NxBxC[i])

    n = X_NxBxC.shape[0] if n is None else n
    total = jnp.zeros((), jnp.promote_types(jax.tree.leaves(params)[0].dtype, jnp.float32))
    return jax.lax.fori_loop(0, n, body, (model.initial_state(X_NxBxC.shape[1]), total))[1]


def perplexity(mean_loss) -> float:
    """exp(mean cross-entropy); a finite but huge loss gives inf, not OverflowError."""
    mean_loss = float(mean_loss)
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def scores(loss_sum: float, num_tokens: int, split: str) -> dict:
    """``<split>_loss`` (nats/token), ``_bpc`` (bits/token) and ``_ppl`` of a summed loss."""
    loss = float(loss_sum) / num_tokens
    return {f"{split}_loss": loss, f"{split}_bpc": loss / math.log(2), f"{split}_ppl": perplexity(loss)}


def train_record(epoch: int, step: int, elapsed_s: float, losses, grad_norms, tokens: int,
                 seconds: float) -> dict:
    """One metrics.jsonl line's training part: the minibatches since the last line."""
    loss = float(np.mean(losses))
    return {"epoch": epoch + 1, "step": step, "elapsed_s": elapsed_s, "train_loss": loss,
            "train_ppl": perplexity(loss), "grad_norm": float(np.mean(grad_norms)),
            "tokens_per_sec": tokens / seconds if seconds > 0 else None}
