"""Keep a virtual machine's CPUs awake while XLA:CPU trains: one idle-priority spinner per CPU.

XLA:CPU hands work between its threads many times per time step (each step's
product, its elementwise work, each loop iteration's end). A thread that waits
sleeps, and on a KVM guest a CPU with nothing to run halts: waking it again
goes through the host's scheduler, which the guest counts as steal time.
PyTorch's OpenMP threads spin while they wait and do not pay this. A spinner
at ``SCHED_IDLE`` priority, which yields at once to any other thread, keeps
each CPU from halting; it only uses time the CPU would spend halted.
docs/performance.md has the steal times and the A/B.

On a machine with simultaneous multithreading a spinning hyperthread would
slow its busy sibling, so ``"auto"`` turns spinners on only where they were
measured to help: under a hypervisor whose CPUs have one thread per core.
They die with the process that started them (``PR_SET_PDEATHSIG``), also
when it is killed.
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


def under_hypervisor(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and "hypervisor" in line.split() for line in f)
    except OSError:
        return False


def one_thread_per_core(cpus: list[int], sysfs: str = "/sys/devices/system/cpu") -> bool:
    """True when no CPU shares its core with another (no SMT); False when unknown."""
    try:
        for cpu in cpus:
            with open(f"{sysfs}/cpu{cpu}/topology/thread_siblings_list", encoding="utf-8") as f:
                if f.read().strip() != str(cpu):
                    return False
    except OSError:
        return False
    return bool(cpus)


def wanted(setting: str, backend: str, cpus: list[int] | None = None, cpuinfo: str = "/proc/cpuinfo",
           sysfs: str = "/sys/devices/system/cpu") -> bool:
    """Whether ``keep_cores_awake`` (``'auto'``, ``'on'`` or ``'off'``) means spinners here."""
    if setting != "auto":
        return setting == "on"
    cpus = _cpus() if cpus is None else cpus
    return (backend == "cpu" and len(cpus) > 1 and under_hypervisor(cpuinfo)
            and one_thread_per_core(cpus, sysfs))


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
                "(--config.keep_cores_awake=off: without them)")
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
