"""Keep freed memory in the process, so XLA:CPU does not page-fault its buffers in anew each call.

XLA:CPU allocates one call's temporaries as one block (330 MB for a train step
of a 2 x 512 LSTM at batch 64 x 100) with ``malloc``. glibc serves a block that
large with a fresh ``mmap`` and returns it with ``munmap``, so every call
page-faults all of it in again, each page zeroed by the kernel: 81,000 faults
per step there, 10-15% of its time on a 2-core KVM guest (docs/performance.md).
With one arena, no ``mmap`` for large blocks and no trimming, a freed block
stays in the heap and the next call reuses it.

The cost: the process keeps its peak memory until it exits (it is reused, not
returned to the system). Only glibc has these settings; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep and reuse freed memory; True where it took effect.

    Call it first thing in a program, before JAX starts its threads: a thread
    that has already allocated keeps its own arena. The programs under
    ``python -m lstm_jax.*`` and the benchmark scripts do.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
