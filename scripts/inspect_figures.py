"""docs/inspect.md's figures from reports of python -m lstm_jax.inspect (their --json files).

  python scripts/inspect_figures.py --flow runs/lstm.json runs/gru.json runs/rnn.json --saturation runs/lstm.json \
      --out docs/img

inspect_flow.png: each run's gradient flow (h of its last layer, c dashed where the cell has it), log
scale; inspect_saturation.png: Karpathy et al.'s Figure 3 for each report given to --saturation.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#d6453f", "#2d6ec8", "#2f9e5b", "#e08e1b", "#8a4fd1"]


def label(r: dict) -> str:
    return f"{r['run']['cell']} ({r['scores']['loss_nats']:.3f} nats/char)"


def flow(reports: list[dict], path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for layer, ax in enumerate(axes):
        for i, r in enumerate(reports):
            g = r["gradient_flow"]
            for c in g["curves"]:
                if c["layer"] == layer and c["norm"]:
                    k = [d for d, v in zip(g["distance"], c["norm"]) if v > 0]
                    v = [v for v in c["norm"] if v > 0]
                    ax.semilogy(k, v, color=COLORS[i], ls="-" if c["field"] == "h" else "--",
                                label=f"{label(r)}: {c['field']}")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("distance k (steps back)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean ||dL_t / ds_(t-k)||")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def saturation(reports: list[dict], path: str) -> None:
    rows = [(r, l) for r in reports for l in sorted({s["layer"] for s in r["saturation"]})]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.4), squeeze=False)
    for ax, (r, layer) in zip(axes[0], rows):
        for i, s in enumerate(x for x in r["saturation"] if x["layer"] == layer):
            ax.scatter(s["left"], s["right"], s=6, alpha=0.5, color=COLORS[i], label=s["gate"])
        ax.plot([0, 1], [1, 0], color="#ccc", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{r['run']['cell']}, layer {layer}",
               xlabel="fraction left-saturated (< 0.1)")
        ax.legend(fontsize=7, markerscale=2)
    axes[0][0].set_ylabel("fraction right-saturated (> 0.9)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow", nargs="*", default=[], help="reports whose gradient flow to draw")
    parser.add_argument("--saturation", nargs="*", default=[], help="reports whose saturation to draw")
    parser.add_argument("--out", default="docs/img")
    a = parser.parse_args()
    load = lambda p: json.load(open(p, encoding="utf-8"))
    if a.flow:
        flow([load(p) for p in a.flow], os.path.join(a.out, "inspect_flow.png"))
    if a.saturation:
        saturation([load(p) for p in a.saturation], os.path.join(a.out, "inspect_saturation.png"))


if __name__ == "__main__":
    main()
