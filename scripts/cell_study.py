"""The study a user runs first: every cell on tiny Shakespeare at one wall-clock budget, several seeds.

  python scripts/cell_study.py --budget 90 --seeds 0,1,2 --out runs/cell_study
  python scripts/cell_study.py --out runs/cell_study --report docs/img/cell_study.png --json docs/data/cell_study.json
  python scripts/cell_study.py --set learning_rate=5e-3 --out runs/cell_study_lr5e-3   # another rate for every cell

Each run is ``python -m lstm_jax.train --config experiments/shakespeare.py`` (2 layers, batch 32 x 64,
Adam with cosine, flax-style initialization) with one cell. Seed 0 of each row runs under
``time_budget_s``, which measures the speed after compiling and fixes the number of updates
(``num_updates`` in its summary.json); the other seeds run exactly that many updates, so they need
no quiet machine and every seed of a row gets the same training. Two tables: the same hidden size
(256) for every cell, and hidden sizes (multiples of 8) that give the LSTM's parameter count (within 3%).
Re-running skips finished runs. The score is the best full-validation loss (nats/char).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

CONFIG = "experiments/shakespeare.py"
VOCAB = 65  # tiny Shakespeare's characters
CLIP = 2.0  # the plot's right edge
STUCK = 3.0  # nats/char: a run that never left the unigram plateau (about 3.3 here)
CELLS = ("lstm", "lstm_cifg", "lstm_peephole", "lstm_layernorm", "lstm_proj", "gru", "gru_reset_after", "rnn",
         "slstm", "min_gru", "min_lstm")


def equal_params_hidden(cell: str, target: int, layers: int = 2) -> int:
    """The hidden size (a multiple of 8) whose model has the parameter count nearest ``target``."""
    from lstm_jax import models

    count = lambda h: models.LanguageModel("scratch", VOCAB, h, num_layers=layers, cell=cell).num_params()
    lo, hi = 8, 2048  # the count grows with the size: bisect to the first at or above the target
    while hi - lo > 8:
        mid = (lo + hi) // 16 * 8
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(count(h) - target))


def rows() -> list[tuple[str, str, dict]]:
    """(table, row name, config overrides)."""
    from lstm_jax import models

    out = [("same hidden size (256)", c, {"cell": c}) for c in CELLS]
    out.append(("same hidden size (256)", "slstm, 4 heads", {"cell": "slstm", "num_heads": 4}))  # xLSTM's
    out.append(("same hidden size (256)", "lstm, forget_bias=1", {"cell": "lstm", "forget_bias": 1.0}))
    out.append(("same hidden size (256)", "lstm, concise (flax's own)",
                {"model": "concise", "init": None, "lstm_impl": "fast"}))
    target = models.LanguageModel("scratch", VOCAB, 256, num_layers=2).num_params()
    for c in ("lstm_cifg", "lstm_proj", "gru", "gru_reset_after", "rnn", "min_gru", "min_lstm"):
        h = equal_params_hidden(c, target)
        out.append((f"same parameters ({target:,})", f"{c} ({h})", {"cell": c, "num_hiddens": h}))
    return out


def run_dir(out: str, name: str, seed: int) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
    return os.path.join(out, f"{slug}_s{seed}")


def train(workdir: str, overrides: dict, log) -> dict:
    args = [sys.executable, "-m", "lstm_jax.train", "--config", CONFIG, f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    if not os.path.exists(os.path.join(workdir, "summary.json")):
        print(" ".join(args[1:]), file=log, flush=True)
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def run(out: str, budget: float, seeds: list[int], only=None, common=None, pattern=None, log=sys.stdout) -> list[dict]:
    table = [(t, name, {**(common or {}), **o}) for t, name, o in rows()
             if (only is None or o.get("cell", "lstm") in only) and (pattern is None or re.search(pattern, name))]
    # Every row's calibrating run first, while the machine is quiet; then the repeats.
    firsts = [train(run_dir(out, name, seeds[0]), {**o, "seed": seeds[0], "time_budget_s": budget}, log)
              for _, name, o in table]
    results = []
    for (tab, name, o), first in zip(table, firsts):
        n = first["num_updates"]
        runs = [first] + [train(run_dir(out, name, s), {**o, "seed": s, "time_budget_s": 0, "num_updates": n}, log)
                          for s in seeds[1:]]
        losses = [r["best_val_loss"] for r in runs]
        results.append({"table": tab, "row": name, "overrides": o, "num_updates": n,
                        "num_params": first["num_params"], "tokens_per_sec": first["tokens_per_sec_median"],
                        "best_val_loss": losses, "mean": statistics.mean(losses), "spread": max(losses) - min(losses)})
    return results


def merge(earlier: list[dict], results: list[dict]) -> list[dict]:
    """Earlier rows joined by new ones (a new row replaces its namesake), in the study's row order."""
    new = {(r["table"], r["row"]) for r in results}
    order = {(t, name): i for i, (t, name, _) in enumerate(rows())}
    merged = [r for r in earlier if (r["table"], r["row"]) not in new] + results
    return sorted(merged, key=lambda r: order.get((r["table"], r["row"]), len(order)))


def markdown(results: list[dict]) -> str:
    lines = []
    for table in dict.fromkeys(r["table"] for r in results):
        lines += [f"\n**{table}**\n", "| cell | parameters | updates | tokens/s | best val nats/char: median | "
                  "mean ± half range | seeds |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in (r for r in results if r["table"] == table):
            seeds = ", ".join(f"{x:.4f}" + (" (stuck)" if x > STUCK else "") for x in r["best_val_loss"])
            lines.append(f"| {r['row']} | {r['num_params']:,} | {r['num_updates']:,} | {r['tokens_per_sec']:,.0f} "
                         f"| {statistics.median(r['best_val_loss']):.4f} | {r['mean']:.4f} ± {r['spread'] / 2:.4f} "
                         f"| {seeds} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(dict.fromkeys(r["table"] for r in results))
    fig, axes = plt.subplots(1, len(tables), figsize=(11, 4.5), dpi=120, sharex=True,
                             gridspec_kw={"width_ratios": [sum(r["table"] == t for r in results) for t in tables]})
    for ax, table in zip(axes, tables):
        rs = sorted((r for r in results if r["table"] == table), key=lambda r: statistics.median(r["best_val_loss"]))
        for y, r in enumerate(rs):
            ok = [x for x in r["best_val_loss"] if x <= CLIP]
            ax.plot(ok, [y] * len(ok), "o", color="tab:blue", alpha=0.6)
            far = [x for x in r["best_val_loss"] if x > CLIP]  # drawn at the edge
            ax.plot([CLIP] * len(far), [y] * len(far), ">", color="tab:red", alpha=0.8)
            ax.plot([statistics.median(r["best_val_loss"])], [y], "|", color="black", markersize=14)
        ax.set_yticks(range(len(rs)), [r["row"] for r in rs], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(table, fontsize=9)
        ax.set_xlim(right=CLIP + 0.02)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel(f"best validation loss (nats/char), lower is better; | the median, > beyond {CLIP}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/cell_study")
    p.add_argument("--budget", type=float, default=90.0, help="seconds of training per run (seed 0 measures)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--report", help="write the plot here (PNG)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--cells", help="comma-separated: only the rows of these cells")
    p.add_argument("--merge", help="a JSON this script wrote: its rows join these (same budget), in the table and plot")
    p.add_argument("--rows", metavar="REGEX", help="only the rows whose name matches, e.g. 'lstm \\(' or '^[^(]*$'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run, e.g. --set learning_rate=4e-3 (repeatable)")
    a = p.parse_args()
    if any("=" not in kv for kv in a.set):
        p.error(f"--set takes KEY=VALUE, got {next(kv for kv in a.set if '=' not in kv)!r}")
    common = dict(kv.split("=", 1) for kv in a.set)
    results = run(a.out, a.budget, [int(s) for s in a.seeds.split(",")], a.cells and a.cells.split(","), common, a.rows)
    if a.merge:
        with open(a.merge) as f:
            earlier = json.load(f)
        if earlier["budget_s"] != a.budget or earlier.get("set", {}) != common:
            p.error(f"--merge {a.merge} ran {earlier['budget_s']} s per run with {earlier.get('set', {})}, "
                    f"not {a.budget} s with {common}")
        results = merge(earlier["results"], results)
    print(markdown(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"budget_s": a.budget, "config": CONFIG, "set": common, "results": results}, f, indent=1)
    if a.report:
        extra = "".join(f", {k}={v}" for k, v in common.items())
        plot(results, a.report, f"tiny Shakespeare, {a.budget:.0f} s per run ({CONFIG}{extra}), one dot per seed")


if __name__ == "__main__":
    main()
