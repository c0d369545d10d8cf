"""Orbax checkpoints of everything a bit-exact resume needs, and nothing pickled.

A checkpoint (``<workdir>/checkpoints/<step>/``, step = minibatch updates so
far) holds four items:

- ``state``  — arrays (orbax PyTree): the train state (params, optimizer state
  including the learning rate, step) and the LSTM state carried between
  minibatches;
- ``meta``   — JSON: format version, data position (epoch, minibatch within
  it), the current epoch's per-minibatch losses and gradient norms so far;
- ``config`` — JSON: the full config that trained it;
- ``vocab``  — JSON: the vocabulary.

The data pipeline keeps no hidden random state: an epoch's minibatches are a
pure function of (seed, epoch), so the position is the whole iterator state.
Training consumes no randomness after initialization, so there is no PRNG key
to carry either. Orbax writes each checkpoint to a temporary directory and
renames it only when complete, so a crash during a save leaves the previous
checkpoint as the latest loadable one.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from lstm_jax.data import Vocab
from lstm_jax.errors import UserError

FORMAT_VERSION = 1
ITEMS = ("state", "meta", "config", "vocab")

# Fields that may change between a run and its resumption: they change what
# is logged or how long it runs, never what one update computes.
SAFE_TO_CHANGE = frozenset({"num_epochs", "log_every", "checkpoint_every", "max_to_keep",
                            "prefixes", "num_preds", "batches_per_call", "overwrite",
                            "lstm_impl"})  # same parameters and function either way


class Restored(NamedTuple):
    step: int
    arrays: Any  # {"train_state": TrainState, "lstm_state": LSTMState}
    meta: dict
    config: dict
    vocab: Vocab


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")  # orbax wants absolute paths


class Checkpoints:
    """A thin wrapper over ``ocp.CheckpointManager`` that speaks our four items."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        # Synchronous saves: the train step donates its buffers, so the arrays
        # must be written before the next step runs (saves take milliseconds here).
        # Leftovers of a save that crashed are removed when training reopens the directory.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, arrays: Any, meta: dict, config: ml_collections.ConfigDict,
             vocab: Vocab) -> bool:
        """Save unless a checkpoint of this step exists already (returns whether it saved)."""
        if step in self.steps():
            return False
        meta = {"format_version": FORMAT_VERSION, **meta}
        saved = self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(json.loads(config.to_json())),
            vocab=ocp.args.JsonSave(json.loads(vocab.to_json())),
        ))
        self._manager.wait_until_finished()
        return bool(saved)

    def _where(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_json(self, step: int) -> tuple[dict, dict, Vocab]:
        """meta, config and vocabulary of a checkpoint, checked for readability and version."""
        where = self._where(step)
        try:
            r = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
                vocab=ocp.args.JsonRestore()))
            meta, config, vocab = r.meta, r.config, Vocab.from_json(json.dumps(r.vocab))
        except Exception as e:  # orbax/json raise many types; all mean the same here
            raise UserError(f"checkpoint {where} is unreadable ({type(e).__name__}: "
                            f"{_first_line(e)}); delete it to fall back to an earlier one") from None
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version != FORMAT_VERSION:
            raise UserError(f"checkpoint {where} has format version {version}, this lstm_jax reads "
                            f"version {FORMAT_VERSION}; use the lstm_jax that wrote it or retrain")
        return meta, config, vocab

    def restore(self, step: int, abstract_arrays: Any) -> Restored:
        """Everything in checkpoint ``step``; ``abstract_arrays`` gives the expected tree."""
        meta, config, vocab = self.restore_json(step)
        where = self._where(step)
        try:
            r = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_arrays)))
            arrays = r.state
        except Exception as e:
            raise UserError(f"checkpoint {where} is unreadable or does not fit this model "
                            f"({type(e).__name__}: {_first_line(e)}); delete it to fall back to an "
                            "earlier one, or start over with --config.overwrite=True") from None
        if jax.tree.structure(arrays) != jax.tree.structure(abstract_arrays):
            raise UserError(f"checkpoint {where} holds a different state layout than this code expects")
        return Restored(step, arrays, meta, config, vocab)

    def close(self) -> None:
        self._manager.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
    """Dotted names of fields that differ, ignoring those safe to change mid-run."""
    now = json.loads(current.to_json())

    def walk(a, b, prefix):
        out = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if name in SAFE_TO_CHANGE:
                continue
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                out += walk(x, y, name + ".")
            elif x != y:
                out.append(f"{name} ({x!r} -> {y!r})")
        return out

    return walk(saved, now, "")
