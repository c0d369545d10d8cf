"""Continue text with a trained model, from its checkpoint alone.

  python -m lstm_jax.predict --workdir runs/scratch --prefix "time traveller" --num_chars 50
  python -m lstm_jax.predict --workdir runs/shakespeare --prefix "ROMEO:" --temperature 0.8 --num_chars 300
  python -m lstm_jax.predict --workdir runs/concise --prefix "the" --prefix "time" --top_k 5 --seed 1

Loads the latest checkpoint of --workdir (--best: the best-validation one;
--step N: that one). The checkpoint holds the config and vocabulary that
trained it, so neither the corpus nor the config file is needed. Prompts are
normalized as the training text was. Greedy (argmax, d2l's predict_ch8)
unless --temperature > 0 or --top_k is given, which sample (--top_k alone
samples at temperature 1); each prefix draws from its own key.
"""

from __future__ import annotations

import sys
import warnings

import jax

from lstm_jax import checkpoint, generate
from lstm_jax.errors import UserError


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

    def run(argv):
        cli.no_arguments(argv)
        temperature = FLAGS.temperature
        if FLAGS.num_chars < 0 or (temperature is not None and temperature < 0) or FLAGS.top_k < 0:
            cli.fail("--num_chars, --temperature and --top_k must be >= 0")
        if FLAGS.top_k and temperature == 0:
            cli.fail("--top_k samples, but --temperature 0 asks for greedy decoding; drop one of them")
        if temperature is None:
            temperature = 1.0 if FLAGS.top_k else 0.0
        try:
            loaded = checkpoint.load_model(FLAGS.workdir, FLAGS.step, best=FLAGS.best,
                                           warn=lambda m: print(f"warning: {m}", file=sys.stderr))
            for i, prefix in enumerate(FLAGS.prefix):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    text = generate.continue_text(
                        loaded.model, loaded.params, loaded.vocab, prefix, FLAGS.num_chars,
                        temperature=temperature, top_k=FLAGS.top_k,
                        key=jax.random.fold_in(jax.random.key(FLAGS.seed), i))
                for w in caught:
                    print(f"warning: {w.message}", file=sys.stderr)
                print(text)
        except UserError as e:
            cli.fail(str(e))

    cli.run(run, __doc__)


if __name__ == "__main__":
    main()
