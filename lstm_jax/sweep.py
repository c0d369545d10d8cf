"""Hyperparameter sweeps from the command line: a grid of trials, resumable, sharded, tabulated.

  python -m lstm_jax.sweep --config experiments/sweep_d2l.py                # the grid in the config
  python -m lstm_jax.sweep --config experiments/concise.py --hidden 64,128 --lr 0.5,1,2 --seeds 0,1
  python -m lstm_jax.sweep --config experiments/shakespeare.py --grid num_layers=1,2 --grid dropout=0,0.2
  python -m lstm_jax.sweep ... --shard 0/4      # this process's quarter; any launcher, one shared --out

One at a time (--mode solo, the default on CPU) each trial is the training
CLI's run, in --out/trials/<name>/; --mode vmap (the default on accelerators)
trains trials that differ only in learning rate and seed as one program. Run
the same command again to resume. Outputs in --out: results.csv,
results.json, heatmap.png, curves.png, best.json; docs/sweeps.md has it all.
The library is lstm_jax/trials.py.
"""

from __future__ import annotations

import os
import sys

import jax

from lstm_jax import reporting
from lstm_jax.errors import UserError
from lstm_jax.trials import (ALIASES, axes_to_plot, expand, grid_axes, groups, parse_values, run_sweep,
                             write_outputs)


def main() -> None:
    from absl import flags
    from ml_collections import config_flags

    from lstm_jax import cli

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Config file (experiments/*.py); override fields with --config.<field>=<value>.",
        lock_config=True)
    flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: a grid axis over any config field (repeatable), "
                              "e.g. --grid num_layers=1,2 --grid data.token=char,word.")
    for short, field in ALIASES.items():
        flags.DEFINE_list(short, None, f"Shorthand for --grid {field}=...")
    flags.DEFINE_string("out", None, "Sweep directory (default: runs/sweep-<config file name>).")
    flags.DEFINE_enum("mode", "auto", ["auto", "solo", "vmap"], "solo: one trial at a time, each the "
                      "training CLI's run; vmap: trials differing only in lr and seed as one program; "
                      "auto: solo on CPU (faster there), vmap on accelerators.")
    flags.DEFINE_string("shard", "0/1", "I/N: run trials I, I+N, I+2N, ... of the grid (N machines, one --out).")
    flags.DEFINE_boolean("retry_failed", False, "On resume, run failed trials again (default: keep them).")
    flags.DEFINE_boolean("dry_run", False, "Print the trials and how they would run, then exit.")
    flags.DEFINE_boolean("report", False, "Write the tables and plots from what has finished; train nothing.")
    flags.mark_flag_as_required("config")
    F = flags.FLAGS

    def run(argv):
        cli.no_arguments(argv)
        config, stem = cli.load_config(config_flag)
        out = F.out or os.path.join("runs", f"sweep-{stem}")
        try:
            given = dict(g.split("=", 1) if "=" in g else (g, "") for g in F.grid)
            given.update({ALIASES[s]: ",".join(F[s].value) for s in ALIASES if F[s].value})
            trials = expand(grid_axes(config, {f: parse_values(config, f, v) for f, v in given.items()}))
            index, count = (int(x) for x in F.shard.split("/"))
            if not 0 <= index < count:
                raise ValueError
        except ValueError:
            cli.fail(f"--shard must be I/N with 0 <= I < N, got {F.shard!r}")
        except UserError as e:
            cli.fail(str(e))
        mode = F.mode if F.mode != "auto" else ("solo" if jax.default_backend() == "cpu" else "vmap")
        if F.dry_run:
            units = [[t] for t in trials] if mode == "solo" else groups(trials)
            print(f"{len(trials)} trials, mode {mode}, {len(units)} programs:")
            for unit in units:
                print("  " + " ".join(t.name for t in unit))
            return
        config_file = F["config"].config_filename
        overrides = [a for a in sys.argv[1:] if a.startswith("--config.") and not a.startswith("--config.sweep.")
                     and a.split("=")[0][len("--config."):] not in {k for k, _ in trials[0].values}]
        stop = cli.StopRequest().install()
        try:
            if F.report:
                summary = {**write_outputs(out, config, trials, config_file, overrides), "ran": 0, "skipped": 0,
                           "elapsed_s": 0.0, "stopped": False}
            else:
                print(f"{len(trials)} trials, mode {mode} ({'one at a time' if mode == 'solo' else 'vmapped'}"
                      f" on {jax.default_backend()}; --mode overrides), shard {index}/{count}, out {out}")
                summary = run_sweep(config, trials, out, mode=mode, shard=(index, count), log=cli.log,
                                    retry_failed=F.retry_failed, should_stop=stop, config_file=config_file,
                                    overrides=overrides)
        except UserError as e:
            cli.fail(str(e))
        if summary["stopped"]:
            print(f"stopped: {summary['ran']} trials were left to run; run the same command again to resume")
            stop.exit()
        results = summary["results"]
        print(f"\n{len(results)} finished trials in {out} ({summary['ran']} trained now in "
              f"{summary['elapsed_s']:.1f} s, {summary['skipped']} already finished), "
              f"{sum(r['status'] != 'ok' for r in results)} failed")
        if results:
            print(reporting.format_table(results, *axes_to_plot(trials)))
        best = summary["best"]
        if best is None:
            print("no trial finished: every trial failed (see results.csv, column 'reason')")
        else:
            val = f", held-out {best['final_val_ppl']:.2f}" if best.get("final_val_ppl") is not None else ""
            print(f"best: {best['trial']}: perplexity {best['final_ppl']:.2f}{val}")
            if summary["command"]:
                print(f"reproduce it alone: {summary['command']}")
        print(f"outputs in {out}: results.csv, results.json, heatmap.png, curves.png, best.json")

    # absl's negative boolean form is --novmap; the earlier CLI's --no-vmap / --vmap pick the mode.
    renamed = {"--no-vmap": "--mode=solo", "--novmap": "--mode=solo", "--vmap": "--mode=vmap"}
    sys.argv = [renamed.get(a, a) for a in sys.argv]
    cli.run(run, __doc__)


if __name__ == "__main__":
    main()
