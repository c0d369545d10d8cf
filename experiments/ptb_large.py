"""Zaremba et al. 2014's large LSTM on the Penn Treebank: 2 x 1500, 35 steps, dropout 0.65, 55 epochs.

  python -m lstm_jax.train --config experiments/ptb_large.py
  python -m lstm_jax.train --config experiments/ptb_large.py --config.time_budget_s=120   # a smoke run

Published: validation 82.2, test 78.4 perplexity. Weights ~ U(-0.04, 0.04), per-step dropout 0.65, SGD
at the paper's rate 1 for 14 epochs, then divided by 1.15 per epoch; clip 10 (ours: rate 1 x 35 and
clip 10 / 35 for the mean loss, see experiments/ptb_small.py). GPU-days on CPU: not reproduced here.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.num_layers = 2
    config.num_hiddens = 1500
    config.embed_dim = 1500
    config.dropout = 0.65
    config.init = "uniform"
    config.init_scale = 0.04
    config.data.corpus = "ptb"
    config.data.token = "word"
    config.data.normalize = "eos"
    config.data.max_tokens = 0
    config.batch_size = 20
    config.num_steps = 35
    config.optimizer = "sgd"
    config.learning_rate = 35.0
    config.grad_clip = 10.0 / 35
    config.lr_schedule = "step"
    config.lr_decay = 1 / 1.15
    config.lr_decay_after = 14
    config.num_epochs = 55
    config.eval_batch_size = 1
    config.log_every = 1
    config.checkpoint_every = 1
    config.prefixes = ("the company said", "in the first quarter")
    config.num_preds = 20
    return config
