"""Score a checkpoint: loss (nats/token), bits per token and perplexity on a split or a file.

  python -m lstm_jax.evaluate --workdir runs/shakespeare                 # validation split, best checkpoint
  python -m lstm_jax.evaluate --workdir runs/shakespeare --split test
  python -m lstm_jax.evaluate --workdir runs/shakespeare --path other.txt --latest

Every token of the split (or file) is a target, each after the one before it, scored in eval_batch_size
parallel streams whose state carries through the whole stream (from zeros), as training scores its
held-out split. A file is read with the checkpoint's vocabulary; tokens it lacks count as <unk> and
are reported.
"""

from __future__ import annotations

import os
import sys

from lstm_jax import batches, checkpoint, corpora, data, steps
from lstm_jax.errors import UserError


def score_ids(loaded: checkpoint.Loaded, ids, start: int, end: int) -> dict:
    """Loss, bits and perplexity of ``ids[start:end]`` under a loaded checkpoint."""
    c = loaded.config
    streams = batches.heldout_streams(ids, start, end, c.eval_batch_size or c.batch_size, c.num_steps)
    total = steps.eval_loss_sum(loaded.model, loaded.params, streams.X, streams.Y, streams.mask)
    return {**steps.scores(total, streams.num_tokens, "eval"), "num_tokens": streams.num_tokens}


def evaluate(workdir: str, split: str = "val", path: str | None = None, best: bool = True,
             step: int | None = None, warn=None) -> dict:
    loaded = checkpoint.load_model(workdir, step, best=best and step is None, warn=warn)
    c = loaded.config
    result = {"checkpoint": loaded.step}
    if path is not None:
        if os.path.isdir(path):
            raise UserError(f"--path {path} is a directory; give one text file (a run trained on a directory's "
                            "train/valid/test files scores them with --split)")
        source = corpora.resolve_corpus("timemachine", path, None, None, None)["train"]
        ids, missing = data.encode_file(source, loaded.vocab)
        if len(ids) < 2:
            raise UserError(f"{path} has {len(ids)} tokens once read like the training text; "
                            "need at least 2 to score one")
        unknown = sum(missing.values())
        if unknown >= len(ids):
            raise UserError(f"{path} has no token the checkpoint's vocabulary knows (it lacks "
                            f"{list(missing)[:10]}); was the model trained on another alphabet?")
        result.update(score_ids(loaded, ids, 1, len(ids)), source=path, unknown_tokens=unknown,
                      unknown_distinct=list(missing)[:20])
        return result
    d = c.data  # in today's format (checkpoint.load_model upgrades it)
    corpus = data.from_config(d)
    start, end = corpus.splits[split]
    if end <= start:
        raise UserError(f"the run has no {split} split (config.data.{split}_fraction is 0); "
                        "use --split with another split or --path FILE")
    result.update(score_ids(loaded, corpus.ids, max(start, 1), end), source=corpus.source, split=split)
    return result


def main() -> None:
    from absl import flags

    from lstm_jax import cli

    flags.DEFINE_string("workdir", None, "A training run's --workdir.")
    flags.DEFINE_enum("split", "val", ["train", "val", "test"], "Which split of the run's corpus to score.")
    flags.DEFINE_string("path", None, "Score this text file instead (read with the checkpoint's vocabulary).")
    flags.DEFINE_boolean("latest", False, "Use the latest checkpoint (default: the best-validation one, "
                         "else the latest).")
    flags.DEFINE_integer("step", None, "Use this checkpoint step (of checkpoints/).")
    flags.mark_flag_as_required("workdir")
    FLAGS = flags.FLAGS

    def run():
        r = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.path, best=not FLAGS.latest, step=FLAGS.step,
                     warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        what = r["source"] if FLAGS.path else f"the {r['split']} split of {r['source']}"
        print(f"{what}: {r['eval_loss']:.4f} nats/token, {r['eval_bpc']:.4f} bits/token, perplexity "
              f"{r['eval_ppl']:.3f} ({r['num_tokens']:,} tokens; checkpoint {r['checkpoint']})")
        if r.get("unknown_tokens"):
            print(f"{r['unknown_tokens']:,} tokens the vocabulary lacks were scored as <unk>: "
                  f"{r['unknown_distinct']}", file=sys.stderr)

    cli.run(run, __doc__)


if __name__ == "__main__":
    main()
