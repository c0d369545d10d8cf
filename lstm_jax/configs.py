"""The one place every config field is defined, with its d2l default.

``experiments/*.py`` import this (ml-collections loads config files as
top-level modules, so they cannot import each other) and change what their
experiment needs. README.md explains each field.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from lstm_jax.errors import UserError


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = "scratch"  # 'scratch' (pure functions) or 'concise' (flax OptimizedLSTMCell)
    c.num_hiddens = 256
    c.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
    c.lstm_impl = "fast"  # 'fast' (hand-written backward) or 'reference' (autodiff / flax's cell); README

    c.data = ml_collections.ConfigDict()
    c.data.path = config_dict.placeholder(str)  # a UTF-8 text file; unset = built-in Time Machine
    c.data.url = config_dict.placeholder(str)  # or download this (cached, hash-checked)
    c.data.sha1 = config_dict.placeholder(str)  # expected SHA-1 of the file at path/url
    c.data.cache_dir = "~/.cache/lstm_jax"
    c.data.token = "char"  # 'char' or 'word'
    c.data.max_tokens = 10000  # d2l trains on the first 10,000 tokens; <= 0 keeps all
    c.data.min_freq = 0
    c.data.num_val = 0  # held-out tokens after the training tokens (0 = off, as d2l)
    c.data.random_iter = False  # d2l's use_random_iter: random vs sequential partitioning

    c.batch_size = 32
    c.num_steps = 35
    c.learning_rate = 1.0
    c.grad_clip = 1.0  # global gradient norm bound (d2l's grad_clipping(net, 1))
    c.num_epochs = 50
    c.seed = 0

    c.log_every = 10  # epochs between d2l-style lines with greedy continuations
    c.prefixes = ("time traveller", "traveller")
    c.num_preds = 50  # characters (tokens) each continuation adds
    c.batches_per_call = 64  # minibatches per compiled call: bounds Ctrl-C latency on big corpora

    c.checkpoint_every = 10  # epochs between checkpoints (also saved at the end and on Ctrl-C)
    c.max_to_keep = 3  # checkpoints kept (the newest)
    c.overwrite = False  # True: discard the workdir's checkpoints and start over
    return c


_POSITIVE = ("num_hiddens", "batch_size", "num_steps", "num_epochs", "log_every",
             "num_preds", "batches_per_call", "checkpoint_every", "max_to_keep")


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail early, naming the field, on values that would only fail deep inside JAX."""
    for name in _POSITIVE:
        if config[name] <= 0:
            raise UserError(f"config.{name} must be positive, got {config[name]}")
    if config.model not in ("scratch", "concise"):
        raise UserError(f"config.model must be 'scratch' or 'concise', got {config.model!r}")
    if config.dtype not in ("float32", "bfloat16"):
        raise UserError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    if config.lstm_impl not in ("fast", "reference"):
        raise UserError(f"config.lstm_impl must be 'fast' or 'reference', got {config.lstm_impl!r}")
    if config.data.token not in ("char", "word"):
        raise UserError(f"config.data.token must be 'char' or 'word', got {config.data.token!r}")
    if config.learning_rate <= 0 or config.grad_clip <= 0:
        raise UserError("config.learning_rate and config.grad_clip must be positive")
    if config.data.num_val < 0 or config.data.min_freq < 0:
        raise UserError("config.data.num_val and config.data.min_freq must be >= 0")
