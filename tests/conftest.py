"""Shared fixtures. Tests run on CPU; nothing here needs the network."""

import os
import subprocess
import sys

import pytest

from lstm_jax.configs import get_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
    """The d2l setup scaled down so a few epochs take a second on CPU."""
    c = get_base_config()
    c.num_hiddens = 32
    c.batch_size = 8
    c.num_steps = 10
    c.data.max_tokens = 2000
    c.num_epochs = 3
    c.log_every = 100
    c.num_preds = 10
    return c


def run_cli(*args, cwd=None, timeout=300, env=None):
    """Run ``python -m ...`` in a subprocess the way a user would."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
