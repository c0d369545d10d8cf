"""The chapter's question as one sweep: hidden size x learning rate, 50 epochs, ranked on held-out text.

  python -m lstm_jax.sweep --config experiments/sweep_d2l.py              # concise model, 20 trials
  python -m lstm_jax.sweep --config experiments/sweep_d2l.py:scratch      # scratch model
  python -m lstm_jax.sweep --config experiments/sweep_d2l.py --seeds 0,1,2 --config.num_epochs=100

The ``sweep`` section is the grid (--hidden/--lr/--seeds/--grid override it,
as does --config.sweep.hidden='(64,128)'); everything else is an ordinary
training config, the same for every trial: d2l's 10,000 training characters,
then the next 1,000 as a validation split.
"""

import ml_collections

from lstm_jax.configs import get_base_config


def get_config(model="concise"):
    config = get_base_config()
    config.model = model
    config.num_epochs = 50
    config.data.max_tokens = 11000
    config.data.val_fraction = 1 / 11  # rank trials by held-out perplexity, not memorization
    config.sweep = ml_collections.ConfigDict()
    config.sweep.hidden = (64, 128, 256, 512)
    config.sweep.learning_rate = (0.25, 0.5, 1.0, 2.0, 4.0)
    config.sweep.seeds = (0,)
    return config
