"""Shared fixtures and helpers. Tests run on CPU; nothing here needs the network.

Every test that trains uses ``experiments/tiny.py`` (the ``tiny_config``
fixture, or ``TINY_CLI`` on a command line). ``python -m pytest -q -m "not slow"``
is the quick loop: it leaves out the tests marked ``slow`` (they start processes
or train several runs) and runs every parametrized test once, with its first
parameters (``pytest_collection_modifyitems`` below); the full suite runs every case.
"""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One compilation cache for the test process and every CLI it starts: the same tiny
# program is compiled once per run of the suite (and not at all when it is warm).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite compiles hundreds of small programs that then run for milliseconds: LLVM's
# optimizations cost more than they save here (they took 2.5x the compile time). Every
# program still runs what XLA compiled; only the machine code is less tuned.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# The corpora are downloaded, never committed: use the read-only copy beside the checkout when
# there is one (CI exports it too), so the tests need no network.
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
if os.path.isdir(SHARED_DATA):
    os.environ.setdefault("LSTM_JAX_DATA", SHARED_DATA)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_CLI = ["--config", "experiments/tiny.py"]


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """A parametrized test's cases after its first are ``slow``: the quick loop runs each test once."""
    seen = set()
    for item in items:
        name = (item.path, getattr(item, "originalname", item.name))
        if name in seen and hasattr(item, "callspec"):
            item.add_marker(pytest.mark.slow)
        seen.add(name)


quiet = dict(log=lambda m: None, progress=False)


def tiny():
    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(REPO, "experiments", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def tiny_config():
    """experiments/tiny.py: d2l's setup scaled down so a few epochs take a second on CPU."""
    return tiny()


def run_cli(*args, cwd=None, timeout=300, env=None):
    """Run ``python -m ...`` (or a script) in a subprocess the way a user would."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def one_error_line(out) -> str:
    """The single ``error: ...`` line a CLI must print for bad input (exit status 2, no traceback)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_close(a, b, rtol, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)
