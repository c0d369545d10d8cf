"""Continuing a prompt: d2l's ``predict_ch8`` as one compiled ``lax.scan``.

The command line that does this from a checkpoint is ``lstm_jax.predict``.

Greedy (argmax) by default, exactly as d2l; a positive temperature samples,
optionally from the ``top_k`` most likely tokens only.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from lstm_jax.data import Vocab
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel


@functools.partial(jax.jit, static_argnames=("model", "num_preds", "temperature", "top_k"))
def generate(model: LanguageModel, params, prefix_ids: jax.Array, key: jax.Array, *,
             num_preds: int, temperature: float = 0.0, top_k: int = 0) -> jax.Array:
    """Token ids that follow ``prefix_ids`` (P,), shape (num_preds,).

    Warm up on all prefix tokens but the last, then feed back each prediction,
    as d2l's ``predict_ch8``. No Python runs per generated token.
    """
    state = model.initial_state(1)
    if prefix_ids.shape[0] > 1:  # a static shape, so this is a trace-time branch
        _, state = model.apply(params, state, prefix_ids[None, :-1])

    def step(carry, key_t):
        state, token = carry
        logits, state = model.apply(params, state, token.reshape(1, 1))
        logits = logits[0, -1]
        if temperature <= 0:
            nxt = jnp.argmax(logits)
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = jax.lax.top_k(logits, top_k)[0][-1]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            nxt = jax.random.categorical(key_t, logits)
        nxt = nxt.astype(prefix_ids.dtype)
        return (state, nxt), nxt

    _, out = jax.lax.scan(step, (state, prefix_ids[-1]), jax.random.split(key, num_preds))
    return out


def encode_prefix(vocab: Vocab, prefix: str, warn: bool = True) -> jax.Array:
    """Prompt -> ids, normalized as the training text was.

    Unknown tokens become ``<unk>`` as in d2l, with a warning naming them.
    """
    tokens = vocab.split(prefix)
    if not tokens:
        raise UserError(f"the prefix {prefix!r} is empty once normalized like the training text: "
                        "give at least one token to start from")
    missing = vocab.unknown(tokens)
    if missing and warn:
        warnings.warn(f"prefix {prefix!r}: the vocabulary lacks {missing}; they are read as <unk>",
                      stacklevel=2)
    return jnp.asarray(vocab.ids(tokens), jnp.int32)


def continue_text(model: LanguageModel, params, vocab: Vocab, prefix: str, num_preds: int,
                  *, temperature: float = 0.0, top_k: int = 0, key: jax.Array | None = None,
                  warn: bool = True) -> str:
    """The (normalized) prefix followed by ``num_preds`` generated tokens, as d2l prints it."""
    ids = encode_prefix(vocab, prefix, warn)
    if top_k < 0 or top_k > len(vocab):
        raise UserError(f"top_k must be between 0 and the vocabulary size {len(vocab)}, got {top_k}")
    key = jax.random.key(0) if key is None else key
    out = generate(model, params, ids, key, num_preds=num_preds, temperature=float(temperature),
                   top_k=int(top_k))
    return vocab.join(vocab.split(prefix) + vocab.to_tokens(jax.device_get(out)))
