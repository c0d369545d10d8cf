"""Orbax checkpoints of everything a bit-exact resume needs, and nothing pickled.

``<workdir>/checkpoints/<step>/`` (step = updates so far) holds four items: ``state`` (orbax arrays:
the train state, learning rate included, and the LSTM state carried between minibatches), ``meta``
(JSON: format version, data position (epoch, minibatch), the metrics since the last record,
training seconds), ``config`` and ``vocab`` (JSON). ``<workdir>/best/<step>/`` holds the same for
the best validation loss. An epoch's minibatches are a function of seed and epoch, dropout's key of
seed and step, so position and step are the whole iterator and PRNG state. Orbax renames a
checkpoint into place only once complete: a crash during a save leaves the previous one the latest.

A workdir is written by one process at a time: :func:`locked` holds an advisory ``fcntl.flock``, which
the kernel releases however the process dies. Readers (``predict``, ``evaluate``) take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Iterator, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lstm_jax import configs, models
from lstm_jax.data import Vocab
from lstm_jax.errors import UserError

# 2: the LSTM state is (B, L, H) for L layers; 1 (before stacked layers): (B, H).
FORMAT_VERSION = 2
READS = (1, 2)
ITEMS = ("state", "meta", "config", "vocab")


class Restored(NamedTuple):
    step: int
    arrays: Any  # {"train_state": ..., "lstm_state": ...}
    meta: dict
    config: dict
    vocab: Vocab


class Checkpoints:
    """A thin wrapper over ``ocp.CheckpointManager`` that speaks our four items."""

    def __init__(self, directory: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)  # orbax wants absolute paths
        # Synchronous saves: the train step donates its buffers, so the arrays must be written before
        # the next step runs. Leftovers of a crashed save are removed when training reopens the directory.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), **{k: ocp.JsonCheckpointHandler() for k in ITEMS[1:]}}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def where(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, arrays: Any, meta: dict, config: ml_collections.ConfigDict,
             vocab: Vocab) -> bool:
        """Save unless a checkpoint of this step exists already (returns whether it saved). A failed
        save (a full disk, most often) removes its temporary directory and says which checkpoint stays."""
        if step in self.steps():
            return False
        meta = {"format_version": FORMAT_VERSION, **meta}
        try:
            saved = self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays),
                meta=ocp.args.JsonSave(meta),
                config=ocp.args.JsonSave(configs.as_dict(config)),
                vocab=ocp.args.JsonSave(json.loads(vocab.to_json())),
            ))
            self._manager.wait_until_finished()
        except Exception as e:  # orbax and tensorstore raise many types for one failed write
            for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
                if "tmp" in name:  # the failed save's temporary directory
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            latest = self.latest_step()
            kept = f"checkpoint {self.where(latest)} stays the latest" if latest is not None else \
                "there is no earlier checkpoint"
            reason = "the disk is full" if _is_disk_full(e) else f"{type(e).__name__}: {_first_line(e)}"
            raise UserError(f"cannot save checkpoint {self.where(step)} ({reason}); {kept}") from None
        return bool(saved)

    def restore_json(self, step: int) -> tuple[dict, dict, Vocab]:
        """meta, config and vocabulary of a checkpoint, checked for readability and version."""
        where = self.where(step)
        try:
            r = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(), vocab=ocp.args.JsonRestore()))
            meta, config, vocab = r.meta, r.config, Vocab.from_json(json.dumps(r.vocab))
        except Exception as e:  # orbax/json raise many types; all mean the same here
            raise UserError(f"checkpoint {where} is unreadable ({type(e).__name__}: {_first_line(e)})") from None
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version not in READS:
            raise UserError(f"checkpoint {where} has format version {version}, this lstm_jax reads "
                            f"versions {READS}; use the lstm_jax that wrote it or retrain")
        return meta, config, vocab

    def restore(self, step: int, abstract_arrays: Any = None) -> Restored:
        """Everything in checkpoint ``step``; ``abstract_arrays`` gives the expected tree. Without it the
        arrays come back as saved (lists and dicts) on this process's first device: enough for the parameters."""
        meta, config, vocab = self.restore_json(step)
        where = self.where(step)
        try:
            if abstract_arrays is None:
                device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                saved = self._manager.item_metadata(step).state.tree
                abstract_arrays = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
            elif meta["format_version"] == 1:  # one layer's LSTM state was (B, H)
                abstract_arrays = {**abstract_arrays, "lstm_state": jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct((a.shape[0], a.shape[2]), a.dtype, sharding=a.sharding),
                    abstract_arrays["lstm_state"])}
            arrays = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_arrays))).state
        except Exception as e:
            raise UserError(f"checkpoint {where} is unreadable or does not fit this model "
                            f"({type(e).__name__}: {_first_line(e)})") from None
        if jax.tree.structure(arrays) != jax.tree.structure(abstract_arrays):
            raise UserError(f"checkpoint {where} holds a different state layout than this code expects")
        if meta["format_version"] == 1 and "lstm_state" in arrays:
            arrays["lstm_state"] = jax.tree.map(lambda a: a[:, None], arrays["lstm_state"])
        return Restored(step, arrays, meta, config, vocab)

    def close(self) -> None:
        self._manager.close()


def _first_line(e: Exception) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return text[0][:300] if text else ""


def _is_disk_full(e: BaseException) -> bool:
    while e is not None:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def restore_latest_readable(ckpts: Checkpoints, abstract_arrays=None, warn=None,
                            quarantine: str | None = None, check=None) -> Restored:
    """The newest checkpoint that reads, falling back past unreadable ones with a warning.

    ``check(meta, config, vocab)`` runs on a checkpoint's JSON before its arrays are read (a UserError
    from it is not a fallback). With ``quarantine`` (training) an unreadable checkpoint is moved there,
    so its step can be saved again; readers leave it in place.
    """
    problems = []  # (step, error) of the unreadable ones, newest first
    for step in reversed(ckpts.steps()):
        try:
            meta, config, vocab = ckpts.restore_json(step)
        except UserError as e:
            problems.append((step, e))
            continue
        if check is not None:
            check(meta, config, vocab)  # an incompatible run is refused, not skipped
        try:
            restored = ckpts.restore(step, abstract_arrays)
        except UserError as e:
            problems.append((step, e))
            continue
        for bad, error in problems:
            moved = ""
            if quarantine is not None:
                os.makedirs(quarantine, exist_ok=True)
                target = os.path.join(quarantine, str(bad))
                shutil.move(ckpts.where(bad), target)
                moved = f" (moved to {target})"
            (warn or warnings.warn)(f"{error}{moved}; falling back to checkpoint {step}")
        return restored
    if not problems:
        raise UserError(f"no checkpoints in {ckpts.directory}")
    more = f" (and the {len(problems) - 1} before it too)" if len(problems) > 1 else ""
    raise UserError(f"{problems[0][1]}{more}; no readable checkpoint is left in {ckpts.directory}")


# What a training run writes into its workdir besides checkpoints: results (a fresh
# run saves checkpoint 0 before the first of these) and what it writes at its start.
RESULTS = ("metrics.jsonl", "summary.json", "perplexity.png")
OUTPUTS = RESULTS + ("config.json", "vocab.json")
CHECKPOINTS, BEST = "checkpoints", "best"


@contextlib.contextmanager
def locked(directory: str, name: str = ".lock", what: str = "a training run") -> Iterator[None]:
    """An exclusive lock on a directory for the ``with`` block, refused at once (naming the holder) when taken."""
    ensure_writable(directory)
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            os.close(fd)
            raise UserError(f"cannot lock {path}: {e.strerror}") from None
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"{directory} is in use by another process (PID {holder}, "
                        f"{what}); wait for it to finish, stop it, or use another directory") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race)


def ensure_writable(directory: str) -> None:
    """Create ``directory`` and prove a file can be written there, or say why not in one line."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{directory} exists and is not a directory; choose another --workdir")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise UserError(f"cannot write to {directory} ({reason}); choose another --workdir") from None


def check_outputs_have_checkpoints(directory: str) -> None:
    """A workdir that holds a run's outputs but no checkpoint is refused, never silently wiped."""
    ckpt = os.path.join(directory, CHECKPOINTS)
    if os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt)):
        return
    found = [name for name in RESULTS if os.path.exists(os.path.join(directory, name))]
    if found:
        raise UserError(f"{directory} has {found[0]} but no checkpoint to resume from; use "
                        "--config.overwrite=True to start over or another --workdir")


def clear(directory: str) -> None:
    """Remove a run's outputs and checkpoints (``--config.overwrite=True``); the lock stays."""
    for name in (CHECKPOINTS, BEST):
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    for name in OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))


class Loaded(NamedTuple):
    model: models.LanguageModel
    params: Any
    vocab: Vocab
    config: ml_collections.ConfigDict  # in today's format (configs.upgrade)
    step: int


def load_model(directory: str, step: int | None = None, best: bool = False, warn=None) -> Loaded:
    """Model, parameters, vocabulary and config of a checkpoint, read-only, no optimizer needed;
    ``best``: the best-validation checkpoint (``<workdir>/best``) if the run has one."""
    where = os.path.join(directory, BEST if best else CHECKPOINTS)
    if best and not os.path.isdir(where):
        where = os.path.join(directory, CHECKPOINTS)
    hint = f"train first with python -m lstm_jax.train --config ... --workdir {directory}"
    if not os.path.isdir(where):
        raise UserError(f"no checkpoints in {where}: {hint}")
    ckpts = Checkpoints(where, read_only=True)
    try:
        steps = ckpts.steps()
        if not steps:
            raise UserError(f"no checkpoints in {where}: {hint}")
        if step is None:
            restored = restore_latest_readable(ckpts, warn=warn)
        elif step not in steps:
            raise UserError(f"no checkpoint {step} in {where}; there are {steps}")
        else:
            restored = ckpts.restore(step)
    finally:
        ckpts.close()
    try:
        config = ml_collections.ConfigDict(configs.upgrade(restored.config))
        model = models.from_config(config, len(restored.vocab))
        train_state = restored.arrays["train_state"]
        params = train_state["params"] if isinstance(train_state, dict) else train_state[1]
        params = jax.tree.map(np.asarray, params)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint {ckpts.where(restored.step)} has an unusable config ({e}); "
                        "was it written by another version of lstm_jax?") from None
    return Loaded(model, params, restored.vocab, config, restored.step)
