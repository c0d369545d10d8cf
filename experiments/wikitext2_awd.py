"""AWD-LSTM (Merity et al. 2018) on WikiText-2: experiments/ptb_awd.py's model with AWD's WikiText-2 command.

  python -m lstm_jax.train --config experiments/wikitext2_awd.py
  python -m lstm_jax.train --config experiments/wikitext2_awd.py --config.time_budget_s=120   # a smoke run

Published: validation 68.6, test 65.8 perplexity (69.1 / 66.0 before fine-tuning, not run here). AWD's
command (`main.py --epochs 750 --data data/wikitext-2 --dropouth 0.2 --seed 1882`) keeps its defaults
otherwise: batch 80, dropouti 0.65, dropouth 0.2, the rest as on the Penn Treebank (experiments/ptb_awd.py
says what differs from AWD). WikiText-2's 33,278-word vocabulary makes the head most of the work:
33,545,278 parameters (AWD: 33M).
Not reproduced on CPU (750 epochs of 2.1M tokens: GPU days); the smoke run is what a CPU session checks.
"""

import os

from lstm_jax.configs import load_file


def get_config():
    config = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ptb_awd.py"))
    config.data.corpus = "wikitext2"
    config.batch_size = 80
    config.dropout_input = 0.65
    config.dropout = 0.2
    config.num_epochs = 750
    config.seed = 1882
    config.prefixes = ("the game", "in the first")
    return config
