"""AWD-LSTM (Merity et al. 2018, "Regularizing and Optimizing LSTM Language Models") on the Penn Treebank.

  python -m lstm_jax.train --config experiments/ptb_awd.py
  python -m lstm_jax.train --config experiments/ptb_awd.py --config.time_budget_s=120   # a smoke run

Published: validation 60.0, test 57.3 perplexity (60.7 / 58.8 before their fine-tuning pass, which
lstm_jax does not run). AWD's command for this table (`main.py --batch_size 20 --data data/penn --dropouti
0.4 --dropouth 0.25 --seed 141 --epoch 500`) with its defaults: 3 layers of 1150, 1150 and 400 units,
the 400-wide embedding tied to the head, locked (variational) dropout 0.4 on the embedding's output, 0.25
between layers and 0.4 before the head, embedding dropout 0.1 (whole words), weight drop 0.5 on every
layer's recurrent matrices, AR 2 and TAR 1, NT-ASGD at rate 30 (nonmono 5) with clip 0.25 and L2 1.2e-6,
70 steps, 500 epochs. AWD's loss is the mean over tokens, as ours, so its rate and clip carry over.

Not as AWD: the sequence length is fixed at 70 (AWD draws it around 70 each minibatch and rescales the
rate: --config.variable_bptt=True; at ptb_hour's size it did not help, docs/word_level.md); every weight ~ U(-1/sqrt(1150), 1/sqrt(1150))
(PyTorch's LSTM default for the wide layers; AWD's embedding is U(-0.1, 0.1), its last layer's bound
1/sqrt(400)); validation and test are scored in 10 streams (AWD: 10 for validation, 1 for test).
Not reproduced on CPU (500 epochs of 929k tokens through 24,210,800 parameters, AWD's 24M: GPU days); the smoke run is
what a CPU session checks.
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.cell = "lstm"
    config.num_layers = 3
    config.num_hiddens = 1150
    config.last_hiddens = 400
    config.embed_dim = 400
    config.tie_weights = True
    config.init = "uniform"
    config.locked_dropout = True
    config.dropout_input = 0.4  # AWD's dropouti
    config.dropout = 0.25  # dropouth: between layers
    config.dropout_output = 0.4  # dropout: before the head
    config.embed_dropout = 0.1  # dropoute
    config.weight_drop = 0.5  # wdrop
    config.activation_reg = 2.0  # alpha
    config.temporal_reg = 1.0  # beta
    config.data.corpus = "ptb"
    config.data.token = "word"
    config.data.normalize = "eos"
    config.data.max_tokens = 0
    config.batch_size = 20
    config.num_steps = 70
    config.optimizer = "ntasgd"
    config.nonmono = 5
    config.learning_rate = 30.0
    config.grad_clip = 0.25
    config.weight_decay = 1.2e-6
    config.num_epochs = 500
    config.eval_batch_size = 10
    config.seed = 141
    config.batches_per_call = 8  # a time budget measures the speed over 4 calls: short ones for a large model
    config.log_every = 1
    config.checkpoint_every = 1
    config.prefixes = ("the company said", "in the first quarter")
    config.num_preds = 20
    return config
