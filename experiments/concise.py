"""d2l's concise LSTM (a library LSTM layer + dense head): 500 epochs.

  python -m lstm_jax.train --config experiments/concise.py

d2l (MXNet, GPU) reports perplexity 1.1 after 500 epochs; see README.md for
what this port measures.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.model = "concise"
    config.num_epochs = 500
    config.log_every = 50
    return config
