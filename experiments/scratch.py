"""d2l's LSTM from scratch: 50 epochs on The Time Machine.

  python -m lstm_jax.train --config experiments/scratch.py

d2l (MXNet, GPU) reports perplexity 14.4 after 50 epochs; see README.md for
what this port measures.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.model = "scratch"
    config.num_epochs = 50
    return config
