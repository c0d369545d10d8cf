"""Huge pages for malloc, so XLA:CPU's big per-call buffers are not page-faulted in 4 KB at a time.

XLA:CPU allocates one call's temporaries as one block (330 MB for a train step
of a 2 x 512 LSTM at batch 64 x 100). glibc serves a block that large with a
fresh ``mmap`` and returns it with ``munmap``, so every call faults all of it
in again: 81,000 page faults per step there, 7-10% of its time on a 2-core KVM
guest (docs/performance.md). With glibc's ``glibc.malloc.hugetlb=1`` tunable,
malloc asks for transparent huge pages, and a step takes a few hundred faults
in all. Keeping freed memory instead (``mallopt``: one arena, no
``mmap``) removed the faults too but cost 7% at d2l's size and 20% for PyTorch,
from threads queueing for the one arena.

glibc reads its tunables only when a process starts, so the programs
(``python -m lstm_jax.*``) and the benchmark scripts start themselves again
with it set, before anything else has run. Elsewhere (another C library, huge
pages off or already on for every mapping, the tunable already set) nothing changes.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_HELD = {signal.SIGINT, signal.SIGTERM}


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def _huge_pages_on_request() -> bool:
    """Transparent huge pages in ``madvise`` mode: a process gets them where it asks."""
    try:
        with open(_THP_SETTING, encoding="ascii") as f:
            return "[madvise]" in f.read()
    except OSError:
        return False


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with glibc's huge-page tunable added, or None where it would change nothing."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not sys.platform.startswith("linux"):
        return None
    version = _glibc_version()
    if version is None or version < (2, 35) or not _huge_pages_on_request():
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def restart_with_huge_pages() -> None:
    """Replace this process (same PID, same command line) with one that has the tunable.

    Call it first thing in a program, before anything has been printed or started;
    where the tunable would change nothing it returns and the program goes on.
    SIGINT and SIGTERM are held (blocked, not lost) across the exec, while the new
    process has no handler yet, and delivered when it gets here and returns: a
    program that installs its own handlers first sees a Ctrl-C of any moment.
    """
    env = environment_with_huge_pages(os.environ)
    if env is None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
