"""lstm_jax.allocator: with malloc's huge pages a big XLA buffer is not page-faulted in 4 KB at a time."""

import json
import os
import sys

import pytest
from conftest import run_cli

from lstm_jax import allocator

# A compiled program whose temporaries (64 MB each) are above glibc's largest mmap threshold
# (32 MB), so each call maps them afresh; prints the minor page faults of ten later calls.
PROGRAM = """
import json, resource
import jax, jax.numpy as jnp
x = jnp.arange(16_000_000, dtype=jnp.float32)
f = jax.jit(lambda x: jnp.cumsum(x[::-1] * 2)[::3].max())
for _ in range(3):
    f(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
PAGES_PER_BUFFER = 16_000_000 * 4 // 4096
HUGE = allocator.environment_with_huge_pages({})


def faults(env):
    out = run_cli("-c", PROGRAM, env={**env, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(HUGE is None, reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_huge_pages_stop_the_page_faults():
    small = faults({"GLIBC_TUNABLES": ""})
    huge = faults({"GLIBC_TUNABLES": HUGE["GLIBC_TUNABLES"]})
    assert min(small) > PAGES_PER_BUFFER / 2, small  # each call faults a whole buffer in again
    assert max(huge) < PAGES_PER_BUFFER / 20, huge  # in 2 MB pages


def test_the_tunable_joins_those_already_set_and_is_never_added_twice():
    if HUGE is None:
        assert allocator.environment_with_huge_pages({"A": "1"}) is None
        return
    env = allocator.environment_with_huge_pages({"A": "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert allocator.environment_with_huge_pages(env) is None
    assert allocator.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


@pytest.mark.skipif(HUGE is None, reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_a_program_restarts_itself_with_the_tunable(tmp_path):
    # The same entry as `python -m lstm_jax.<program>`: lstm_jax/__init__.py restarts the process.
    (tmp_path / "show_env.py").write_text("import os\nprint(os.getpid(), os.environ.get('GLIBC_TUNABLES'))\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "GLIBC_TUNABLES": ""}
    out = run_cli("-c", "import sys, runpy; sys.argv = ['-m']; import lstm_jax; runpy.run_module('show_env')",
                  env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "glibc.malloc.hugetlb=1", out.stdout


@pytest.mark.skipif(HUGE is None, reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_a_ctrl_c_during_the_restart_is_held_for_the_new_process():
    # Between exec and the new process's own handler SIGINT would kill it silently (exit -2):
    # the restart blocks it, and the new process takes it once its handler is in place.
    program = """
import os, signal, sys
sys.argv = ['-m']
real_execve = os.execve
def execve_after_a_ctrl_c(*args):
    os.kill(os.getpid(), signal.SIGINT)
    print('held' if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []) else 'delivered', file=sys.stderr)
    real_execve(*args)
os.execve = execve_after_a_ctrl_c
import lstm_jax
print('not interrupted')
"""
    out = run_cli("-c", program, env={"GLIBC_TUNABLES": ""})
    assert out.returncode == 130, (out.returncode, out.stderr)
    assert out.stderr.split()[:1] == ["held"] and "interrupted while starting" in out.stderr, out.stderr
    assert "not interrupted" not in out.stdout
