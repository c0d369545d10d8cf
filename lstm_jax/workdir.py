"""A run's directory: one writer at a time, writable before anything is compiled, nothing lost.

A workdir is written by one process at a time: :class:`Lock` holds an
advisory ``fcntl.flock`` on ``<dir>/.lock`` for the whole run. The kernel
releases it when the process dies, however it dies, so a kill -9 never
leaves a stale lock. Readers (``predict``, ``evaluate``) take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile

from lstm_jax.errors import UserError

# What a training run writes into its workdir besides checkpoints: results (a fresh
# run saves checkpoint 0 before the first of these) and what it writes at its start.
RESULTS = ("metrics.jsonl", "summary.json", "perplexity.png")
OUTPUTS = RESULTS + ("config.json", "vocab.json")
CHECKPOINTS, BEST = "checkpoints", "best"


class Lock:
    """An exclusive lock on a directory, refused at once (naming the holder) when taken."""

    def __init__(self, directory: str, name: str = ".lock", what: str = "a training run"):
        self.path = os.path.join(directory, name)
        self.directory, self.what = directory, what
        self._fd = None

    def __enter__(self) -> "Lock":
        ensure_writable(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise UserError(f"cannot lock {self.path}: {e.strerror}") from None
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.directory} is in use by another process (PID {holder}, "
                            f"{self.what}); wait for it to finish, stop it, or use another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays (removing it would race)
            self._fd = None


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
    has_ckpt = os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt))
    if has_ckpt:
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
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:
            pass
