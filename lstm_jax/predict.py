"""Continue text with a trained model, from its checkpoint alone.

  python -m lstm_jax.predict --workdir runs/scratch --prefix "time traveller" --num_chars 50
  python -m lstm_jax.predict --workdir runs/shakespeare --prefix "ROMEO:" --temperature 0.8 --num_chars 300
  python -m lstm_jax.predict --workdir runs/concise --prefix "the" --prefix "time" --top_k 5 --seed 1

Loads the latest checkpoint of --workdir (--best: the best-validation one; --step N: that one). The
checkpoint holds the config and vocabulary that trained it, so neither the corpus nor the config file
is needed. Prompts are normalized as the training text was. Greedy (argmax, d2l's predict_ch8) unless
--temperature > 0 or --top_k is given, which sample (--top_k alone samples at temperature 1); each
prefix draws from its own key.

As a library: :func:`continue_text` (d2l's ``predict_ch8`` as one compiled ``lax.scan``), :func:`generate`.
"""

from __future__ import annotations

import functools
import sys
import warnings

import jax
import jax.numpy as jnp

from lstm_jax import checkpoint
from lstm_jax.data import Vocab
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel


@functools.partial(jax.jit, static_argnames=("model", "num_preds", "temperature", "top_k"))
def generate(model: LanguageModel, params, prefix_ids: jax.Array, key: jax.Array, *,
             num_preds: int, temperature: float = 0.0, top_k: int = 0) -> jax.Array:
    """Token ids that follow ``prefix_ids`` (P,), shape (num_preds,): warm up on all prefix tokens but
    the last, then feed back each prediction, as d2l's ``predict_ch8``; no Python per generated token."""
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
    """Prompt -> ids, normalized as the training text was; unknown tokens become ``<unk>`` (d2l), with a warning."""
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


def main() -> None:
    from absl import flags

    from lstm_jax import cli

    flags.DEFINE_string("workdir", None, "A training run's --workdir (holds checkpoints/).")
    flags.DEFINE_multi_string("prefix", ["time traveller"], "Text to continue; repeat for several.")
    flags.DEFINE_integer("num_chars", 50, "Tokens (characters) to generate per prefix.")
    flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    flags.DEFINE_boolean("best", False, "Load the best-validation checkpoint (best/) instead of the latest.")
    flags.DEFINE_float("temperature", None, "0 = greedy argmax (d2l, the default); > 0 samples from "
                       "softmax(logits / T) (default 1 with --top_k).")
    flags.DEFINE_integer("top_k", 0, "Sample only from the K most likely tokens (0 = all).")
    flags.DEFINE_integer("seed", 0, "Seed for sampling; prefix i draws from fold_in(key(seed), i).")
    flags.mark_flag_as_required("workdir")
    FLAGS = flags.FLAGS

    def run():
        temperature = FLAGS.temperature
        if FLAGS.num_chars < 0 or (temperature is not None and temperature < 0) or FLAGS.top_k < 0:
            raise UserError("--num_chars, --temperature and --top_k must be >= 0")
        if FLAGS.top_k and temperature == 0:
            raise UserError("--top_k samples, but --temperature 0 asks for greedy decoding; drop one of them")
        if temperature is None:
            temperature = 1.0 if FLAGS.top_k else 0.0
        loaded = checkpoint.load_model(FLAGS.workdir, FLAGS.step, best=FLAGS.best,
                                       warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        for i, prefix in enumerate(FLAGS.prefix):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                text = continue_text(loaded.model, loaded.params, loaded.vocab, prefix, FLAGS.num_chars,
                                     temperature=temperature, top_k=FLAGS.top_k,
                                     key=jax.random.fold_in(jax.random.key(FLAGS.seed), i))
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            print(text)

    cli.run(run, __doc__)


if __name__ == "__main__":
    main()
