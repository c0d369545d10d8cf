"""Idle-priority spinners (lstm_jax/spinners.py): that they run as promised, only when asked, and
never outlive the process that started them."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny
from lstm_jax import spinners, train


def spinner_pids(parent: int) -> list[int]:
    """Live spinners of ``parent``, from /proc (zombies count as gone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if spinners.MARKER.encode() in args and str(parent).encode() in args and state != "Z":
            found.append(int(pid))
    return found


def wait_for(condition, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_one_idle_priority_spinner_per_cpu_while_the_block_runs():
    cpus = sorted(os.sched_getaffinity(0))
    lines = []
    with spinners.keep_cores_awake(True, lines.append) as n:
        assert n == len(cpus) and len(lines) == 1 and "config.keep_cores_awake" in lines[0]
        assert wait_for(lambda: len(spinner_pids(os.getpid())) == n)
        # The policy is set by the spinner itself, just after it starts.
        assert wait_for(lambda: all(os.sched_getscheduler(p) == os.SCHED_IDLE for p in spinner_pids(os.getpid())))
        assert sorted(next(iter(os.sched_getaffinity(p))) for p in spinner_pids(os.getpid())) == cpus
        os.kill(spinner_pids(os.getpid())[0], signal.SIGINT)  # a terminal's Ctrl-C is for the program
        time.sleep(0.3)
        assert len(spinner_pids(os.getpid())) == n
    assert spinner_pids(os.getpid()) == []
    with spinners.keep_cores_awake(False, lines.append) as n:
        assert n == 0 and spinner_pids(os.getpid()) == [] and len(lines) == 1


@pytest.mark.slow
def test_spinners_die_with_a_killed_parent():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom lstm_jax import spinners\n"
         "with spinners.keep_cores_awake(True):\n    print('up', flush=True)\n    time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        assert wait_for(lambda: len(spinner_pids(parent.pid)) == len(os.sched_getaffinity(0)))
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert wait_for(lambda: spinner_pids(parent.pid) == [], seconds=5)


def test_training_keeps_cores_awake_when_asked_and_not_otherwise(tmp_path, monkeypatch):
    seen = []
    real = spinners.keep_cores_awake

    def spy(enabled, log):
        seen.append(enabled)
        return real(enabled, log)

    monkeypatch.setattr(spinners, "keep_cores_awake", spy)
    for setting, workdir in ((True, "a"), (False, "b")):
        config = tiny()
        config.num_epochs, config.keep_cores_awake = 1, setting
        lines = []
        train.train_and_evaluate(config, str(tmp_path / workdir), log=lines.append, progress=False)
        assert any("idle-priority spinners" in line for line in lines) is setting
    assert seen == [True, False] and spinner_pids(os.getpid()) == []
