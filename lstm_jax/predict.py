"""Continue text with a trained model, from its checkpoint alone.

  python -m lstm_jax.predict --workdir runs/scratch --prefix "time traveller" --num_chars 50
  python -m lstm_jax.predict --workdir runs/concise --prefix "the" --prefix "time" \\
      --temperature 0.8 --top_k 5 --seed 1

Loads the latest checkpoint of --workdir (or --step N). The checkpoint holds
the config and vocabulary that trained it, so neither the corpus nor the
config file is needed. Greedy (argmax, d2l's predict_ch8) unless
--temperature > 0, which samples (from the --top_k most likely tokens if set).
"""

from __future__ import annotations

import os
import sys
import warnings

import ml_collections

from lstm_jax import checkpoint, generate
from lstm_jax.data import Vocab
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel, make_model


def load_checkpoint(workdir: str, step: int | None = None
                    ) -> tuple[LanguageModel, object, Vocab, ml_collections.ConfigDict, int]:
    """(model, params, vocab, config, step) of a checkpoint in ``workdir``."""
    from lstm_jax import train  # the train state's layout lives there

    where = checkpoint.checkpoint_dir(workdir)
    if not os.path.isdir(where):
        raise UserError(f"no checkpoints in {where}: train first with "
                        f"python -m lstm_jax.train --config ... --workdir {workdir}")
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        steps = ckpts.steps()
        if not steps:
            raise UserError(f"no checkpoints in {where}: train first with "
                            f"python -m lstm_jax.train --config ... --workdir {workdir}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise UserError(f"no checkpoint {step} in {where}; there are {steps}")
        _, saved, vocab = ckpts.restore_json(step)
        try:
            config = ml_collections.ConfigDict(saved)
            impl = config.get("lstm_impl", "fast")
            if impl == "auto":  # written before 'auto' was retired: it meant this
                impl = "fast" if config.model == "scratch" else "reference"
            model = make_model(config.model, len(vocab), config.num_hiddens, config.dtype, impl)
            optimizer = train.make_optimizer(config.learning_rate, config.grad_clip)
            abstract = train.abstract_arrays(model, optimizer, config.batch_size)
        except (AttributeError, KeyError, TypeError) as e:
            raise UserError(f"checkpoint {where}/{step} has an unusable config ({e}); "
                            "was it written by another version of lstm_jax?") from None
        restored = ckpts.restore(step, abstract)
    finally:
        ckpts.close()
    return model, restored.arrays["train_state"].params, vocab, config, step


def main() -> None:
    from absl import app, flags

    from lstm_jax import cli

    flags.DEFINE_string("workdir", None, "A training run's --workdir (holds checkpoints/).")
    flags.DEFINE_multi_string("prefix", ["time traveller"], "Text to continue; repeat for several.")
    flags.DEFINE_integer("num_chars", 50, "Tokens (characters) to generate per prefix.")
    flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy argmax (d2l); > 0 samples from softmax(logits / T).")
    flags.DEFINE_integer("top_k", 0, "With sampling: draw only from the K most likely tokens (0 = all).")
    flags.DEFINE_integer("seed", 0, "Seed for sampling.")
    flags.mark_flag_as_required("workdir")
    FLAGS = flags.FLAGS

    def run(argv):
        cli.setup()
        if len(argv) > 1:
            cli.fail(f"unexpected arguments {argv[1:]}")
        if FLAGS.num_chars < 0 or FLAGS.temperature < 0:
            cli.fail("--num_chars and --temperature must be >= 0")
        try:
            model, params, vocab, _, _ = load_checkpoint(FLAGS.workdir, FLAGS.step)
            for prefix in FLAGS.prefix:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    text = generate.continue_text(model, params, vocab, prefix, FLAGS.num_chars,
                                                  temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                                                  seed=FLAGS.seed)
                for w in caught:
                    print(f"warning: {w.message}", file=sys.stderr)
                print(text)
        except UserError as e:
            cli.fail(str(e))

    app.run(run, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
