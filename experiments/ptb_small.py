"""Zaremba et al. 2014's small LSTM on the Penn Treebank: 2 x 200, 20 steps, batch 20, no dropout.

  python -m lstm_jax.train --config experiments/ptb_small.py
  python -m lstm_jax.evaluate --workdir runs/ptb_small --split test

Published: validation 120.7, test 114.5 perplexity (TensorFlow's ptb_word_lm: 121.4 / 115.9).
Expect (2026-12-07, a 2-core AMD EPYC, AVX-512, sharing the machine with other runs): best validation
117.8 (epoch 6), test 113.3 with those weights, in 54 minutes (docs/results.md has the curve).
Mikolov's PTB (10,000 words, <eos> at each line's end), embedding of the hidden size, every weight
~ U(-0.1, 0.1), forget bias 0, plain SGD, 13 epochs: the rate is constant for 4, then halved every
epoch; the state carries across minibatches and starts at zero each epoch.

The paper's rate 1 and clip 5 act on a loss summed over the 20 time steps and averaged over the batch;
ours is the mean over both, whose gradient is 1/20 of theirs, so the same updates need rate 1 x 20 and
clip 5 / 20 (PyTorch's word_language_model defaults, lr 20 and clip 0.25, are this). Validation and test
are scored as one stream each (eval_batch_size 1, as the paper's test), state carried through.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.cell = "lstm"
    config.num_layers = 2
    config.num_hiddens = 200
    config.embed_dim = 200
    config.init = "uniform"
    config.init_scale = 0.1
    config.data.corpus = "ptb"
    config.data.token = "word"
    config.data.normalize = "eos"
    config.data.max_tokens = 0
    config.batch_size = 20
    config.num_steps = 20
    config.optimizer = "sgd"
    config.learning_rate = 20.0  # Zaremba's 1 on a loss summed over 20 steps
    config.grad_clip = 0.25  # Zaremba's 5 / 20
    config.lr_schedule = "step"
    config.lr_decay = 0.5
    config.lr_decay_after = 4
    config.num_epochs = 13
    config.eval_batch_size = 1
    config.log_every = 1
    config.checkpoint_every = 1
    config.prefixes = ("the company said", "in the first quarter")
    config.num_preds = 20
    return config
