"""Tiny Shakespeare, every character kept: a 2-layer LSTM for a 3-minute budget on a 2-core CPU.

  python -m lstm_jax.train --config experiments/shakespeare.py
  python -m lstm_jax.predict --workdir runs/shakespeare --prefix "ROMEO:" --temperature 0.8 --num_chars 300
  python scripts/compare_torch.py --config experiments/shakespeare.py   # PyTorch, same size and time

karpathy/char-rnn's input.txt (nanoGPT's shakespeare_char): 1,115,394
characters, 65 distinct, the first 90% for training and the last 10% scored
in full (nats/char). The concise model (flax's parameters and initializers)
runs through the fast path; settings found with a sweep (docs/results.md).
Expect (2026-12-02, 2-core Intel Xeon AVX-512, 29-33k tokens/s): validation 1.485 nats/char
(2.14 bits/char) after 5 epochs in 151-173 s; a same-size nn.LSTM in the same 180 s: 1.499.
On a slower machine set num_epochs so that the cosine ends with the 180 s: an epoch is 490
updates of 2,048 tokens, so num_epochs = tokens/s x 180 / 1,003,520, rounded (2026-12-03, a
2-core Ice Lake Xeon at 21k tokens/s: --config.num_epochs=4 gave 1.491 in 181 s).
"""

from lstm_jax.configs import get_base_config


def get_config():
    config = get_base_config()
    config.model = "concise"
    config.lstm_impl = "fast"  # flax's parameters through the hand-written backward pass
    config.num_layers = 2
    config.num_hiddens = 256
    config.data.corpus = "tinyshakespeare"
    config.data.normalize = "none"
    config.data.max_tokens = 0
    config.data.val_fraction = 0.1
    config.batch_size = 32  # more updates per second beat bigger ones in 3 minutes
    config.num_steps = 64
    config.optimizer = "adam"
    config.learning_rate = 8e-3
    config.lr_schedule = "cosine"
    config.warmup_steps = 50
    # The cosine should reach 0 as the 180 s run out: 5 epochs take 151-173 s at 29-33k tokens/s (AVX-512,
    # docs/results.md); ~21k tokens/s: --config.num_epochs=4; ~15k (a 2-core AVX2 machine): 3.
    config.num_epochs = 5
    config.time_budget_s = 180.0
    config.eval_every_steps = 200
    config.batches_per_call = 16
    config.checkpoint_every = 1
    config.log_every = 1
    config.prefixes = ("ROMEO:", "JULIET:\n")
    config.num_preds = 200
    return config
