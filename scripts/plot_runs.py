"""Training curves of several runs in one picture (README's docs/img/perplexity.png).

  python scripts/plot_runs.py runs/scratch runs/concise --out docs/img/perplexity.png
  python scripts/plot_runs.py runs/shakespeare runs/shakespeare_long --x elapsed_s --y loss \
      --out docs/img/shakespeare.png

Each run is a training workdir; its metrics.jsonl gives perplexity (or loss in nats per
token) against epoch, step or training seconds, training (solid) and held-out (dashed) where
there is one; its config.json gives the label. ``--reference FILE.json`` adds another program's
held-out curve: ``{"label": ..., "points": [{"epoch": 1, "elapsed_s": 125, "val_ppl": 196.6}, ...]}``
(docs/data/torch_word_lm_ptb_2026-12-07.json, PyTorch's word_language_model).
"""

from __future__ import annotations

import argparse
import json
import os

from lstm_jax.metrics import _pyplot, read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="training workdirs")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    parser.add_argument("--x", choices=("epoch", "step", "elapsed_s"), default="epoch")
    parser.add_argument("--y", choices=("ppl", "loss"), default="ppl", help="perplexity or nats per token")
    parser.add_argument("--reference", action="append", default=[], help="another program's held-out curve (JSON)")
    args = parser.parse_args()
    x, y = args.x, args.y
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for run in args.runs:
        records = read_metrics(os.path.join(run, "metrics.jsonl"))
        if not records:
            parser.error(f"{run} has no metrics.jsonl")
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        impl = c.get("lstm_impl") or ("fast path" if c["model"] == "scratch" else "flax's cell")
        label = f"{c['model']} ({impl}), {c.get('num_layers', 1)} x {c['num_hiddens']}"
        if c.get("dropout"):
            label += f", dropout {c['dropout']:g}"
        if c.get("num_updates"):  # which overrides a budget
            label += f", {c['num_updates']:,} updates"
        elif c.get("time_budget_s"):
            label += f", {c['time_budget_s']:g} s budget"
        if c.get("variable_bptt"):
            label += ", variable length"
        line, = ax.plot([r[x] for r in records], [r[f"train_{y}"] for r in records], label=label)
        val = [(r[x], r[f"val_{y}"]) for r in records if r.get(f"val_{y}") is not None]
        if val:
            ax.plot(*zip(*val), "--", color=line.get_color(), label=f"{label}, held-out")
    for path in args.reference:
        with open(path, encoding="utf-8") as f:
            ref = json.load(f)
        ax.plot([p[x] for p in ref["points"]], [p[f"val_{y}"] for p in ref["points"]], "k:", marker=".",
                label=f"{ref['label']}, held-out")
    if y == "ppl":
        ax.set_yscale("log")
    if x == "epoch":
        ax.set_xscale("log")
    ax.set_xlabel({"epoch": "epoch", "step": "update", "elapsed_s": "training seconds"}[x])
    ax.set_ylabel("perplexity" if y == "ppl" else "loss (nats per token)")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
