"""lstm_jax.allocator: a freed XLA buffer is reused instead of page-faulted in again each call."""

import json
import sys

import pytest
from conftest import run_cli

# Runs a compiled program whose temporaries (64 MB each) are above glibc's largest mmap threshold
# (32 MB), so by default each call maps them afresh; prints the minor page faults of later calls.
PROGRAM = """
import json, resource, sys
if sys.argv[1] == "keep":
    from lstm_jax import allocator
    assert allocator.keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.arange(16_000_000, dtype=jnp.float32)
f = jax.jit(lambda x: jnp.cumsum(x[::-1] * 2)[::3].max())
for _ in range(15):  # the heap grows for the first few calls, then holds
    f(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
PAGES_PER_BUFFER = 16_000_000 * 4 // 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_keeping_freed_memory_stops_the_page_faults():
    faults = {}
    for mode in ("keep", "default"):
        out = run_cli("-c", PROGRAM, mode, env={"JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "false"})
        assert out.returncode == 0, out.stderr[-2000:]
        faults[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    # By default every call faults a whole buffer in again; kept, most calls fault nothing (now
    # and then a few in a row still land beyond the heap's high-water mark).
    assert min(faults["default"]) > PAGES_PER_BUFFER / 2, faults
    assert sorted(faults["keep"])[5] < PAGES_PER_BUFFER / 100, faults
    assert sum(faults["keep"]) < sum(faults["default"]) / 2, faults
