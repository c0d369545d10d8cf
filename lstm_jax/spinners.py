"""Keep a virtual machine's CPUs awake while XLA:CPU trains: one idle-priority spinner per CPU.

XLA:CPU hands work between its threads many times per time step (each step's
product, its elementwise work, each loop iteration's end). A thread that waits
sleeps, and on a KVM guest a CPU with nothing to run halts: waking it again
goes through the host's scheduler, and when the host is busy the guest counts
the wait as steal time. PyTorch's OpenMP threads spin while they wait instead.
A spinner at ``SCHED_IDLE`` priority, which yields at once to any other thread,
keeps each CPU from halting, at the price of a context switch at each wake-up.

So it is a trade, opt-in (``config.keep_cores_awake``): on a KVM guest it
gains while the host is busy and loses a little while the host is idle, and it
slows PyTorch in the same process (docs/performance.md has the A/B;
``scripts/bench_spinners.py`` measures it on yours). Not for machines with
simultaneous multithreading, where a spinning hyperthread slows its sibling.
Spinners die with the process that started them (``PR_SET_PDEATHSIG``), also
when it is killed, and ignore a terminal's Ctrl-C, which is for the program.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Callable, Iterator

MARKER = os.path.abspath(__file__)  # each spinner runs this file: ``python -I -S spinners.py PARENT CPU``


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@contextlib.contextmanager
def keep_cores_awake(enabled: bool, log: Callable[[str], None] = lambda message: None) -> Iterator[int]:
    """Run one idle-priority spinner per CPU of this process while the block runs; yields their number."""
    cpus = _cpus() if enabled else []
    procs = []
    try:
        for cpu in cpus:
            procs.append(subprocess.Popen(
                [sys.executable, "-I", "-S", MARKER, str(os.getpid()), str(cpu)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # Not in a session of their own: with the kernel's autogroups, a new session is a new
            # scheduling group with a fair share of the CPUs, whatever its tasks' priority.
        if procs:
            log(f"keeping {len(procs)} CPUs awake with idle-priority spinners while training "
                "(config.keep_cores_awake)")
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _spin(parent: int, cpu: int) -> None:
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is for the program
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the parent ends
    if os.getppid() != parent:
        return  # the parent ended before that took effect
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        pass


if __name__ == "__main__":
    _spin(int(sys.argv[1]), int(sys.argv[2]))
