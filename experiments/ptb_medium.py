"""Zaremba et al. 2014's medium LSTM on the Penn Treebank: 2 x 650, 35 steps, dropout 0.5, 39 epochs.

  python -m lstm_jax.train --config experiments/ptb_medium.py
  python -m lstm_jax.train --config experiments/ptb_medium.py --config.time_budget_s=120   # a smoke run

Published: validation 86.2, test 82.7 perplexity. Weights ~ U(-0.05, 0.05), per-step dropout 0.5 on the
non-recurrent connections (embedding output, between the layers, before the head), SGD at the paper's
rate 1 for 6 epochs, then times 0.8 per epoch; clip 5. As in experiments/ptb_small.py the paper's rate
and clip act on a loss summed over the 35 steps, so ours (the mean) are 1 x 35 and 5 / 35.
Not reproduced on CPU (about 39 x 929k tokens through a 650-wide model: GPU hours); the smoke run is
what a CPU session checks, scripts/gpu_check.sh runs it for its budget on a GPU.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.num_layers = 2
    config.num_hiddens = 650
    config.embed_dim = 650
    config.dropout = 0.5
    config.init = "uniform"
    config.init_scale = 0.05
    config.data.corpus = "ptb"
    config.data.token = "word"
    config.data.normalize = "eos"
    config.data.max_tokens = 0
    config.batch_size = 20
    config.num_steps = 35
    config.optimizer = "sgd"
    config.learning_rate = 35.0  # Zaremba's 1 on a loss summed over 35 steps
    config.grad_clip = 5.0 / 35
    config.lr_schedule = "step"
    config.lr_decay = 0.8
    config.lr_decay_after = 6
    config.num_epochs = 39
    config.eval_batch_size = 1
    config.log_every = 1
    config.checkpoint_every = 1
    config.prefixes = ("the company said", "in the first quarter")
    config.num_preds = 20
    return config
