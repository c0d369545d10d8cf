"""d2l's deep RNN: two stacked LSTM layers of 256 on The Time Machine, 500 epochs.

  python -m lstm_jax.train --config experiments/deep.py

d2l (MXNet, GPU) reports training perplexity 1.0; docs/results.md says what
this port measures. d2l builds it from the library's layer, so this is the
concise model (flax's OptimizedLSTMCell, one per layer).
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.model = "concise"
    config.num_layers = 2
    config.num_hiddens = 256
    config.learning_rate = 2.0
    config.grad_clip = 1.0
    config.num_epochs = 500
    config.log_every = 50
    return config
