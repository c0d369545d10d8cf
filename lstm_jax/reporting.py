"""Side effects of a run that a person looks at: metrics.jsonl and perplexity.png."""

from __future__ import annotations

import json
import math
import os
from typing import Iterable


class MetricsWriter:
    """One JSON object per line, flushed at once, so a crash loses nothing written.

    Tools read the fields ``epoch``, ``train_ppl``, ``tokens_per_sec`` and,
    with a held-out split, ``val_ppl``.
    """

    def __init__(self, path: str):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop records past ``epoch`` (a resumed run rewrites them)."""
        keep = [r for r in read_metrics(self.path) if r["epoch"] <= epoch]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, self.path)


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_perplexity(records: Iterable[dict], path: str, title: str = "") -> None:
    """Perplexity against epoch (log scale), training and, if present, held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["train_ppl"] for r in records], label="train")
    val = [(r["epoch"], r["val_ppl"]) for r in records if r.get("val_ppl") is not None]
    if val:
        ax.plot(*zip(*val), label="held-out")
    finite = [r["train_ppl"] for r in records if math.isfinite(r["train_ppl"])]
    if finite and max(finite) / max(min(finite), 1e-9) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
