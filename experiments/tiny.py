"""The smoke-test config: d2l's setup scaled down so that a few epochs take a second on a CPU.

  python -m lstm_jax.train --config experiments/tiny.py

The tests (tests/conftest.py) train this; it is not meant to learn much.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.num_hiddens = 32
    config.batch_size = 8
    config.num_steps = 10
    config.data.max_tokens = 2000
    config.num_epochs = 3
    config.log_every = 100
    config.num_preds = 10
    return config
