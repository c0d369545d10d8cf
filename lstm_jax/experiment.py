"""A run's parts, derived from its config before the first update: data, model, optimizer,
and the compiled steps called with their arguments placed on the mesh."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from lstm_jax import batches, configs, data, distributed, models, steps
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel
from lstm_jax.steps import Optimizer, TrainState, init_train_state, make_optimizer


@dataclasses.dataclass
class Experiment:
    """Everything a run derives from its config before the first update."""

    config: ml_collections.ConfigDict
    corpus: data.Corpus
    model: LanguageModel
    optimizer: Optimizer
    batches_per_epoch: int
    heldout: dict  # split name -> batches.Streams, for the non-empty held-out splits
    num_updates: int  # the run's length and its schedule's: num_updates, or num_epochs x minibatches
    shardings: distributed.Shardings = None  # default: data parallel over all devices (one is fine)

    def __post_init__(self):
        if self.shardings is None:
            self.shardings = distributed.Shardings(distributed.make_mesh())
        distributed.check_batch_size(self.config.batch_size, self.shardings.num_devices)
        distributed.check_batch_size(self.eval_batch_size, self.shardings.num_devices, "config.eval_batch_size")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
        configs.validate(config)
        c, d = config, config.data
        corpus = data.from_config(d)
        batches.check_enough(len(corpus.train), c.batch_size, c.num_steps, d.random_iter,
                             f"the training split of {corpus.source}")
        n = batches.num_batches(len(corpus.train), c.batch_size, c.num_steps, d.random_iter)
        heldout = {name: batches.heldout_streams(corpus.ids, *corpus.splits[name], c.eval_batch_size or c.batch_size,
                                                 c.num_steps)
                   for name in ("val", "test") if corpus.splits[name][1] > corpus.splits[name][0]}
        if c.optimizer == "ntasgd" and "val" not in heldout:
            raise UserError("config.optimizer='ntasgd' decides when to average from the validation loss: "
                            "the run needs a validation split (config.data.val_fraction, or a corpus with one)")
        model = models.from_config(c, len(corpus.vocab))
        total = c.num_updates or c.num_epochs * n
        return cls(c, corpus, model, make_optimizer(c, total, n), n, heldout, total)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def with_num_updates(self, num_updates: int) -> "Experiment":
        """The same run, ``num_updates`` long: its schedule ends there (a new compiled program)."""
        optimizer = make_optimizer(self.config, num_updates, self.batches_per_epoch)
        return dataclasses.replace(self, num_updates=num_updates, optimizer=optimizer)

    def measure_num_updates(self, ts, state, budget_s: float) -> int:
        """How many updates fit in ``budget_s`` seconds of training, from the compiled step's speed on
        copies of the train state (thrown away), at most ``num_epochs`` epochs' worth."""
        n, block = self.block_length, self.epoch_batches(0, variable=False).block(0, self.block_length)
        seconds = []
        for _ in range(4):  # the first call's time includes one-time work; the median of the others
            copies = jax.tree.map(lambda a: a.copy(), (ts, state))
            start = time.perf_counter()
            _, _, m = self.train_block(*copies, block.X, block.Y, n, self.lr_scale(self.config.num_steps))
            np.asarray(m["loss"])
            seconds.append(time.perf_counter() - start)
            if len(seconds) >= 2 and sum(seconds) >= budget_s / 2:  # a large model: measuring would outlast it
                break
        per_update = float(np.median(seconds[1:])) / n
        return max(1, min(int(budget_s / per_update), self.config.num_epochs * self.batches_per_epoch))

    def epoch_batches(self, epoch: int, variable: bool | None = None) -> batches.EpochBatches:
        """Epoch ``epoch``'s minibatches: a pure function of (seed, epoch). ``variable``: the lengths
        (default: the config's ``variable_bptt``; False: all ``num_steps``, the same cut points)."""
        c = self.config
        return batches.EpochBatches(self.corpus.train, c.batch_size, c.num_steps, c.data.random_iter,
                                    np.random.default_rng([c.seed, epoch]),
                                    c.variable_bptt if variable is None else variable)

    def lr_scale(self, length: int):
        """The rate's factor for minibatches of ``length`` steps: length / num_steps with
        ``variable_bptt`` (AWD-LSTM's), else None (no factor in the program)."""
        return np.float32(length / self.config.num_steps) if self.config.variable_bptt else None

    def initial_state(self):
        """A fresh state, placed as the compiled step takes it (placed otherwise, as a plain
        device array is, the step would compile again at the next epoch's start)."""
        return jax.device_put(self.model.initial_state(self.config.batch_size), self.shardings.rows)

    def init_train_state(self) -> TrainState:
        return init_train_state(self.model, self.optimizer, jax.random.key(self.config.seed))

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

    def train_block(self, ts: TrainState, state, X_NxBxT, Y_NxBxT, n: int, lr_scale=None):
        """``steps.train_block`` on this run's model: the batch rows and state rows split over
        devices, the rest replicated (host numpy is fine); returns (ts, state, metrics)."""
        sh = self.shardings
        dropout_key = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1))  # raw data
        args = distributed.place((ts, state, X_NxBxT, Y_NxBxT, np.int32(n), np.asarray(dropout_key),
                                  *(() if lr_scale is None else (lr_scale,))),
                                 (sh.replicated, sh.rows, sh.blocks, sh.blocks, sh.replicated, sh.replicated,
                                  *(() if lr_scale is None else (sh.replicated,))))
        return steps.train_block(self.model, self.optimizer, self.config.data.random_iter, *args, shardings=sh)

    def evaluate(self, params, split: str, n: int | None = None) -> dict:
        """``<split>_loss``, ``_bpc`` and ``_ppl`` of a held-out split, scored in full."""
        s, sh = self.heldout[split], self.shardings
        args = distributed.place((params, s.X, s.Y, s.mask, np.int32(len(s.X) if n is None else n)),
                                 (sh.replicated, sh.blocks, sh.blocks, sh.blocks, sh.replicated))
        return steps.scores(steps.eval_loss_sum(self.model, *args), s.num_tokens, split)

    def compile(self, ts: TrainState, state) -> tuple[TrainState, object, float]:
        """Compile the train step (for each likely length with ``variable_bptt``) and every evaluation
        by calling them on no minibatch, so that compile time stays out of the speed; returns
        (ts, state, seconds)."""
        start = time.perf_counter()
        sh = self.shardings
        # As a jitted step leaves them (their types name the mesh), so the loop's calls hit this program.
        ts, state = jax.jit(lambda *a: a, out_shardings=(sh.replicated, sh.rows))(*distributed.place(
            (ts, state), (sh.replicated, sh.rows)))
        c = self.config
        for L in batches.likely_lengths(c.num_steps) if c.variable_bptt else [c.num_steps]:
            X = np.zeros((self.block_length, c.batch_size, L), np.int32)
            ts, state, _ = self.train_block(ts, state, X, X, 0, self.lr_scale(L))  # donated and given back unchanged
        for split in self.heldout:
            self.evaluate(ts.params, split, n=0)
        jax.block_until_ready((ts, state))
        return ts, state, time.perf_counter() - start


def check_memory(exp: Experiment, log: Callable[[str], None]) -> None:
    """Refuse a model that cannot fit, before anything is allocated or compiled.

    The estimate, in float32s: parameters, gradients, the updated copy and transposed weights, the
    optimizer's slots, and what the backward pass keeps per token (gates, cells, hidden states, logits).
    """
    c, m = exp.config, exp.model
    slots = {"sgd": 0, "adam": 2, "adamw": 2, "ntasgd": 1}[c.optimizer]  # ntasgd: the mean
    per_token = m.num_layers * 10 * c.num_hiddens + 4 * m.vocab_size + 4 * c.embed_dim
    need = 4 * (m.num_params() * (4 + slots) + c.batch_size * c.num_steps * per_token)
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    else:
        have, where = (device.memory_stats() or {}).get("bytes_limit"), f"the {device.device_kind}"
    if not have:
        return
    gb = lambda b: f"{b / 2**30:.1f} GB"
    if need > have:
        raise UserError(f"this model needs about {gb(need)} to train (parameters, gradients, optimizer state and "
                        f"activations of a {c.batch_size} x {c.num_steps} minibatch) but {where} has {gb(have)}; "
                        "use a smaller num_hiddens, num_layers or batch_size")
    if need > 0.7 * have:
        log(f"warning: this model needs about {gb(need)} of the {gb(have)} available")
