"""Sweep hidden size x learning rate (x seed): many trials, one compiled program per hidden size.

  python scripts/sweep.py --config experiments/concise.py --hidden 64,128,256,512 \\
      --lr 0.25,0.5,1,2,4 [--seeds 0,1,2] [--config.num_epochs=50] --out runs/sweep-NAME
  python scripts/sweep.py --config experiments/sweep_d2l.py          # the grid from the config
  python scripts/sweep.py --config experiments/sweep_d2l.py:scratch --no-vmap --jobs 2

Trials of one hidden size train together (jax.vmap of the train step over
train state, hyperparameters and minibatches); --no-vmap trains them one by
one. Outputs in --out: results.csv, results.json, heatmap.png, curves.png,
best.json and trials/<name>/result.json. Run the same command again to
resume: finished trials are skipped (--retry_failed reruns the failed ones).
The library is lstm_jax/sweep.py; README.md ("Sweeps") explains it all.
"""

from __future__ import annotations

import os
import sys

from lstm_jax import sweep
from lstm_jax.errors import UserError
from lstm_jax import cli  # one-line errors, as the training CLI


def _numbers(name: str, values, kind):
    if not values:
        return None
    out = []
    for v in values:
        try:
            x = kind(v)
        except ValueError:
            cli.fail(f"--{name}: {v!r} is not {'an integer' if kind is int else 'a number'}")
        if name in ("hidden", "lr") and not x > 0:
            cli.fail(f"--{name}: values must be positive, got {v}")
        out.append(x)
    return out


def _overrides(argv: list[str]) -> list[str]:
    """The --config.<field> overrides as given (not the grid's), for the reproduce command."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config.") and not a.startswith("--config.sweep."):
            if "=" not in a and i + 1 < len(argv):
                a, i = f"{a}={argv[i + 1]}", i + 1
            out.append(a)
        i += 1
    return [a for a in out if a.split("=")[0] not in
            ("--config.num_hiddens", "--config.learning_rate", "--config.seed")]


def main() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Config file (experiments/*.py); override fields with --config.<field>=<value>.",
        lock_config=True)
    flags.DEFINE_list("hidden", None, "Hidden sizes, e.g. 64,128,256 (default: config.sweep.hidden, "
                      "else config.num_hiddens).")
    flags.DEFINE_list("lr", None, "Learning rates, e.g. 0.25,0.5,1,2,4 (default: config.sweep.learning_rate, "
                      "else config.learning_rate).")
    flags.DEFINE_list("seeds", None, "Seeds, e.g. 0,1,2 (default: config.sweep.seeds, else config.seed).")
    flags.DEFINE_string("out", None, "Sweep directory (default: runs/sweep-<config file name>).")
    flags.DEFINE_boolean("vmap", True, "Train trials of one hidden size together in one vmapped program; "
                         "--no-vmap (or --novmap) trains them one by one.")
    flags.DEFINE_integer("jobs", 1, "Processes to run trials (vmapped groups) in; each gets its share of "
                         "the CPU cores.", lower_bound=1)
    flags.DEFINE_integer("group_size", 0, "At most this many trials per vmapped program (0: a whole hidden "
                         "size).", lower_bound=0)
    flags.DEFINE_boolean("retry_failed", False, "On resume, run failed trials again (default: keep them).")
    flags.DEFINE_boolean("dry_run", False, "Print the trials and how they would be grouped, then exit.")
    flags.mark_flag_as_required("config")
    FLAGS = flags.FLAGS

    def run(argv):
        cli.setup()
        if len(argv) > 1:
            cli.fail(f"unexpected arguments {argv[1:]}; options look like --config.<field>=<value>")
        config, stem = cli.load_config(config_flag)
        config_file = FLAGS["config"].config_filename
        out = FLAGS.out or os.path.join("runs", f"sweep-{stem}")
        trials = sweep.grid_from_config(config, _numbers("hidden", FLAGS.hidden, int),
                                        _numbers("lr", FLAGS.lr, float), _numbers("seeds", FLAGS.seeds, int))
        if FLAGS.dry_run:
            units = sweep.plan_units(trials, FLAGS.vmap, FLAGS.group_size, FLAGS.jobs)
            print(f"{len(trials)} trials in {len(units)} {'vmapped groups' if FLAGS.vmap else 'solo runs'}:")
            for unit in units:
                print("  " + " ".join(t.name for t in unit))
            return
        try:
            summary = sweep.run_sweep(config, trials, out, vmap=FLAGS.vmap, jobs=FLAGS.jobs,
                                      group_size=FLAGS.group_size, retry_failed=FLAGS.retry_failed,
                                      log=cli.log, config_file=config_file, overrides=_overrides(sys.argv[1:]))
        except UserError as e:
            cli.fail(str(e))
        except KeyboardInterrupt:
            cli.fail("interrupted; run the same command again to resume")
        results = summary["results"]
        failed = [r for r in results if r["status"] != "ok"]
        print(f"\n{len(results)} trials ({summary['ran']} trained now in {summary['elapsed_s']:.1f} s, "
              f"{summary['skipped']} already finished), {len(failed)} failed")
        print(sweep.format_table(results))
        best = summary["best"]
        if best is None:
            print("no trial finished: every trial failed (see results.csv, column 'reason')")
        else:
            val = f", held-out {best['final_val_ppl']:.2f}" if best["final_val_ppl"] is not None else ""
            print(f"best: {best['trial']} (hidden {best['hidden']}, lr {best['lr']:g}, seed {best['seed']}): "
                  f"perplexity {best['final_ppl']:.2f}{val}")
            print(f"reproduce it alone: {summary['command']}")
        print(f"outputs in {out}: results.csv, results.json, heatmap.png, curves.png, best.json")

    # absl's negative form of --vmap is --novmap; accept the spelling users type too.
    app.run(run, flags_parser=lambda argv: cli.parse_flags(
        ["--novmap" if a == "--no-vmap" else a for a in argv]))


if __name__ == "__main__":
    main()
