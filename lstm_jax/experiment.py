"""A run's parts, derived from its config before the first update: data, model, optimizer, programs."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax import batches, configs, data, distributed, models
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel
from lstm_jax.steps import TrainState, eval_loss_sum, init_train_state, make_optimizer, scores, train_block


@dataclasses.dataclass
class Experiment:
    """Everything a run derives from its config before the first update."""

    config: ml_collections.ConfigDict
    corpus: data.Corpus
    model: LanguageModel
    optimizer: optax.GradientTransformation
    batches_per_epoch: int
    heldout: dict  # split name -> batches.Streams, for the non-empty held-out splits
    shardings: distributed.Shardings = None  # default: data parallel over all devices (one is fine)

    def __post_init__(self):
        if self.shardings is None:
            self.shardings = distributed.Shardings(distributed.make_mesh())
        distributed.check_batch_size(self.config.batch_size, self.shardings.num_devices)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
        configs.validate(config)
        c, d = config, config.data
        path = data.resolve_corpus(d.corpus, d.path, d.url, d.sha1, d.cache_dir)
        corpus = data.load_corpus(path, d.token, d.max_tokens, d.val_fraction, d.test_fraction,
                                  d.min_freq, d.normalize)
        batches.check_enough(len(corpus.train), c.batch_size, c.num_steps, d.random_iter,
                          f"the training split of {path}")
        n = batches.num_batches(len(corpus.train), c.batch_size, c.num_steps, d.random_iter)
        heldout = {name: batches.heldout_streams(corpus.ids, *corpus.splits[name], c.batch_size, c.num_steps)
                   for name in ("val", "test") if corpus.splits[name][1] > corpus.splits[name][0]}
        model = models.from_config(c, len(corpus.vocab))
        return cls(c, corpus, model, make_optimizer(c, c.num_epochs * n), n, heldout)

    def epoch_batches(self, epoch: int, seed: int | None = None) -> batches.EpochBatches:
        """Epoch ``epoch``'s minibatches: a pure function of (seed, epoch)."""
        c = self.config
        seed = c.seed if seed is None else seed
        return batches.EpochBatches(self.corpus.train, c.batch_size, c.num_steps, c.data.random_iter,
                                 np.random.default_rng([seed, epoch]))

    def init_train_state(self) -> TrainState:
        return init_train_state(self.model, self.optimizer, jax.random.key(self.config.seed))

    @property
    def dropout_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.config.seed), 1)

    @property
    def block_length(self) -> int:
        """N, the minibatches one compiled call can take."""
        return min(self.config.batches_per_call, self.batches_per_epoch)

    def abstract_arrays(self) -> dict:
        """What a checkpoint holds, placed as training wants it (restores straight onto the mesh)."""
        sh = self.shardings
        shapes = jax.eval_shape(lambda: {"train_state": self.init_train_state(),
                                         "lstm_state": self.model.initial_state(self.config.batch_size)})
        place = lambda s: (lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s))
        return {"train_state": jax.tree.map(place(sh.replicated), shapes["train_state"]),
                "lstm_state": jax.tree.map(place(sh.rows), shapes["lstm_state"])}


# Compiled programs by the text of their lowered module: runs in one process
# (a sweep's trials, the tests) that lower to the same program share one.
_COMPILED: collections.OrderedDict = collections.OrderedDict()


def compile_cached(lowered) -> Any:
    key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    if key not in _COMPILED:
        _COMPILED[key] = lowered.compile()
        while len(_COMPILED) > 32:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    return _COMPILED[key]


class Programs:
    """A run's compiled functions: the train block and one evaluation per held-out split.

    Compiled before the first step, so compile time stays out of the speed;
    each callable places its arguments (host numpy is fine) on the mesh: the
    batch rows and hidden-state rows split over devices, the rest replicated.
    """

    def __init__(self, exp: Experiment, ts: TrainState):
        start = time.perf_counter()
        c, sh = exp.config, exp.shardings
        shape = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
        block = functools.partial(train_block, exp.model, exp.optimizer, c.data.random_iter)
        # The dropout key travels as its raw data: a host value every process can pass.
        fn = jax.jit(lambda ts, state, X, Y, n, key_data: block(ts, state, X, Y, n, jax.random.wrap_key_data(key_data)),
                     in_shardings=(sh.replicated, sh.rows, sh.blocks, sh.blocks, sh.replicated, sh.replicated),
                     out_shardings=(sh.replicated, sh.rows, sh.replicated), donate_argnums=(0, 1))
        XY = jax.ShapeDtypeStruct((exp.block_length, c.batch_size, c.num_steps), jnp.int32)
        key_data = jax.eval_shape(lambda: jax.random.key_data(exp.dropout_key))
        lowered = fn.lower(shape(ts), jax.eval_shape(lambda: exp.model.initial_state(c.batch_size)), XY, XY,
                           jax.ShapeDtypeStruct((), jnp.int32), key_data)
        train = distributed.placed(compile_cached(lowered))
        self.train = lambda ts, state, X, Y, n, key: train(ts, state, X, Y, n, np.asarray(jax.random.key_data(key)))
        self._eval, self._heldout = {}, exp.heldout
        evaluate = jax.jit(functools.partial(eval_loss_sum, exp.model),
                           in_shardings=(sh.replicated, sh.blocks, sh.blocks, sh.blocks),
                           out_shardings=sh.replicated)
        for name, s in exp.heldout.items():
            self._eval[name] = distributed.placed(compile_cached(evaluate.lower(shape(ts.params), *shape(s[:3]))))
        self.compile_s = time.perf_counter() - start

    def evaluate(self, params, split: str) -> dict:
        s = self._heldout[split]
        return scores(self._eval[split](params, s.X, s.Y, s.mask), s.num_tokens, split)


def device_summary() -> str:
    """``cpu``, ``4 x cpu``, ``gpu (NVIDIA H200)``; ``, N processes`` when multi-process."""
    return distributed.describe()


def memory_estimate(exp: Experiment) -> int:
    """Bytes a train step needs, roughly: parameters, gradients and optimizer state, and
    what the backward pass keeps per token (gates, cells, hidden states, logits)."""
    c, m = exp.config, exp.model
    params = m.num_params()
    slots = {"sgd": 0, "adam": 2, "adamw": 2}[c.optimizer]
    per_token = m.num_layers * 10 * c.num_hiddens + 4 * m.vocab_size + 4 * c.embed_dim
    # parameters, gradients, the updated copy and transposed weights; the optimizer's slots
    return 4 * (params * (4 + slots) + c.batch_size * c.num_steps * per_token)


def check_memory(exp: Experiment, log: Callable[[str], None]) -> None:
    """Refuse a model that cannot fit, before anything is allocated or compiled."""
    need, have = memory_estimate(exp), distributed.memory_bytes()
    if have is None:
        return
    gb = lambda b: f"{b / 2**30:.1f} GB"
    if need > have:
        raise UserError(f"this model needs about {gb(need)} to train (parameters, gradients, optimizer "
                        f"state and activations of a {exp.config.batch_size} x {exp.config.num_steps} "
                        f"minibatch) but {distributed.memory_name()} has {gb(have)} available; use a "
                        "smaller num_hiddens, num_layers or batch_size")
    if need > 0.7 * have:
        log(f"warning: this model needs about {gb(need)} of the {gb(have)} available")
