"""What a person looks at: metrics.jsonl, log lines, progress, plots, and a sweep's tables."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np


# A run's metrics and log lines


class MetricsWriter:
    """One JSON object per line, flushed at once, so a crash loses nothing written. Every line has
    ``epoch`` (1-based, the epoch it ends in), ``step``, ``elapsed_s``, ``train_loss``, ``train_ppl``,
    ``grad_norm``, ``tokens_per_sec``; an evaluated line adds ``val_loss`` (nats/token), ``val_bpc``, ``val_ppl``."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run writes them again)."""
        keep = [r for r in read_metrics(self.path) if r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def epoch_line(record: dict, device: str) -> str:
    """d2l's line: ``epoch 50: perplexity 14.4, 152388 tokens/sec on cpu``."""
    val = f", held-out perplexity {record['val_ppl']:.2f}" if "val_ppl" in record else ""
    speed = f", {record['tokens_per_sec']:.0f} tokens/sec" if record.get("tokens_per_sec") else ""
    return f"epoch {record['epoch']}: perplexity {record['train_ppl']:.1f}{val}{speed} on {device}"


def eval_line(record: dict) -> str:
    return (f"step {record['step']} (epoch {record['epoch']}, {record['elapsed_s']:.0f} s): val "
            f"{record['val_loss']:.4f} nats/token ({record['val_bpc']:.4f} bits), perplexity "
            f"{record['val_ppl']:.3f}; train loss {record['train_loss']:.4f}")


def final_line(summary: dict, final: dict) -> str:
    val = (f", best validation loss {summary['best_val_loss']:.4f} nats/token"
           if summary.get("best_val_loss") is not None else "")
    return (f"perplexity {final['train_ppl']:.1f}{val}, {summary['tokens_per_sec_median']:.0f} tokens/sec "
            f"on {summary['device']} (median; compile {summary['compile_s']:.1f} s, "
            f"training {summary['train_s']:.1f} s)")


class Progress:
    """A progress bar on a terminal; elsewhere (a log file) a line every ``every_s`` seconds."""

    def __init__(self, total: int, initial: int, unit: str, enabled: bool = True,
                 log: Callable[[str], None] = print, every_s: float = 60.0):
        self.total, self.n, self.unit = total, initial, unit
        self._bar, self._log, self._every = None, log, every_s
        self._last, self._enabled = time.monotonic(), enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        elif self._enabled and time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            extra = ", ".join(f"{k} {v}" for k, v in postfix.items())
            self._log(f"{self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%)"
                      + (f", {extra}" if extra else ""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_perplexity(records: Iterable[dict], path: str, title: str = "") -> None:
    """Perplexity against epoch (or step, when evaluated within epochs), training and held-out."""
    plt = _pyplot()
    records = list(records)
    x = "step" if len({r["epoch"] for r in records}) < len(records) else "epoch"  # evaluated within epochs
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r[x] for r in records], [r["train_ppl"] for r in records], label="train")
    val = [(r[x], r["val_ppl"]) for r in records if r.get("val_ppl") is not None]
    if val:
        ax.plot(*zip(*val), label="held-out")
    finite = [r["train_ppl"] for r in records if math.isfinite(r["train_ppl"])]
    if finite and max(finite) / max(min(finite), 1e-9) > 10:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# A sweep's tables and plots: one row per trial, scored by held-out or training perplexity.


def score(result: dict) -> float:
    """What ranks trials: final held-out perplexity if there is one, else final training perplexity."""
    v = result.get("final_val_ppl")
    v = result.get("final_ppl") if v is None else v
    return float(v) if result.get("status") == "ok" and v is not None else math.inf


def score_name(results: Sequence[dict]) -> str:
    return "held-out perplexity" if any(r.get("final_val_ppl") is not None for r in results) \
        else "training perplexity"


def best_trial(results: Sequence[dict]) -> dict | None:
    return min((r for r in results if math.isfinite(score(r))), key=score, default=None)


def dumps(obj) -> str:
    """Strict JSON: non-finite floats become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, allow_nan=False)


def write_tables(out: str, results: Sequence[dict], columns: Sequence[str]) -> None:
    """``results.csv`` (``columns``) and ``results.json`` (the same rows plus each curve)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)  # a missing value or None is an empty cell
    write_atomic(os.path.join(out, "results.csv"), buf.getvalue())
    write_atomic(os.path.join(out, "results.json"),
                 dumps([{**{k: r.get(k) for k in columns}, "curve": r.get("curve", [])} for r in results]))


def cell_table(results: Sequence[dict], rows: str, cols: str):
    """Mean score per (rows, cols) value pair over everything else; NaN where nothing finished ok."""
    row_values = sorted({r[rows] for r in results}, key=_order)
    col_values = sorted({r[cols] for r in results}, key=_order)
    table = np.full((len(row_values), len(col_values)), np.nan)
    failed = np.zeros_like(table, dtype=int)
    for i, a in enumerate(row_values):
        for j, b in enumerate(col_values):
            cell = [r for r in results if r[rows] == a and r[cols] == b]
            ok = [score(r) for r in cell if math.isfinite(score(r))]
            failed[i, j] = len(cell) - len(ok)
            if ok:
                table[i, j] = float(np.mean(ok))
    return row_values, col_values, table, failed


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def format_table(results: Sequence[dict], rows: str, cols: str) -> str:
    """A text table: ``rows`` x ``cols``, mean over the other grid axes (seeds, ...)."""
    row_values, col_values, table, failed = cell_table(results, rows, cols)
    head = f"final {score_name(results)} (mean over the other axes; 'failed' = nothing finished)"
    names = [f"{cols} {v:g}" if isinstance(v, float) else f"{cols} {v}" for v in col_values]
    width = max(9, *(len(c) + 2 for c in names))
    first = max(8, len(rows) + 2, *(len(str(a)) + 2 for a in row_values))
    lines = [head, f"{rows:<{first}}" + "".join(c.rjust(width) for c in names)]
    for i, a in enumerate(row_values):
        cells = ["failed" if np.isnan(v) else f"{v:.2f}" + ("*" if failed[i, j] else "")
                 for j, v in enumerate(table[i])]
        lines.append(f"{str(a):<{first}}" + "".join(c.rjust(width) for c in cells))
    if (failed > 0)[np.isfinite(table)].any():
        lines.append("* some trials of this cell failed; the mean is over the others")
    return "\n".join(lines)


def plot_heatmap(results: Sequence[dict], path: str, rows: str, cols: str, title: str = "") -> None:
    """``rows`` x ``cols``, colour = final perplexity (mean over the rest), best cell boxed."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import ScalarFormatter

    plt = _pyplot()
    row_values, col_values, table, failed = cell_table(results, rows, cols)
    fig, ax = plt.subplots(figsize=(1.3 * len(col_values) + 2.5, 0.8 * len(row_values) + 2), dpi=120)
    finite = table[np.isfinite(table)]
    norm = None
    if finite.size:
        lo, hi = finite.min(), max(finite.max(), finite.min() * 1.001)
        norm = LogNorm(lo, hi) if hi / lo > 3 else Normalize(lo, hi)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(table), cmap=cmap, norm=norm, origin="lower", aspect="auto")
    if finite.size:
        fig.colorbar(im, ax=ax, label=f"final {score_name(results)}", format=ScalarFormatter())
    ax.set_xticks(range(len(col_values)), [f"{v:g}" if isinstance(v, float) else str(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [str(v) for v in row_values])
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    for i in range(len(row_values)):
        for j in range(len(col_values)):
            v = table[i, j]
            text = "failed" if np.isnan(v) else f"{v:.2f}" + (f"\n({failed[i, j]} failed)" if failed[i, j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or (norm and norm(v) < 0.5) else "white")
    if finite.size:
        i, j = np.unravel_index(np.nanargmin(table), table.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
        ax.plot([j], [i + 0.32], marker="*", color="red", markersize=12)
    ax.set_title(title or "final perplexity (best cell boxed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: Sequence[dict], path: str, panels: str, colours: str, title: str = "") -> None:
    """Training perplexity against epoch: a panel per value of ``panels``, colour by ``colours``."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    plt = _pyplot()
    panel_values = sorted({r[panels] for r in results}, key=_order)
    colour_values = sorted({r[colours] for r in results}, key=_order)
    finite = [p["train_ppl"] for r in results for p in r.get("curve") or [] if math.isfinite(p["train_ppl"])]
    log_scale = bool(finite) and max(finite) / max(min(finite), 1e-9) > 10
    palette = plt.get_cmap("plasma")(np.linspace(0, 0.85, max(len(colour_values), 1)))
    fig, axes = plt.subplots(1, len(panel_values), figsize=(4.2 * len(panel_values), 3.8), dpi=120,
                             squeeze=False, sharey=True)
    for ax, value in zip(axes[0], panel_values):
        labelled = set()
        for r in (r for r in results if r[panels] == value):
            curve = r.get("curve") or []
            xs, ys = [p.get("epoch") for p in curve], [p["train_ppl"] for p in curve]
            k = colour_values.index(r[colours])
            label = None if k in labelled else f"{colours} {r[colours]}"
            labelled.add(k)
            ax.plot(xs, ys, color=palette[k], label=label, linewidth=1.2)
            if r.get("status") == "failed" and xs:
                ax.plot([xs[-1]], [ys[-1]], "x", color=palette[k], markersize=8)
        if log_scale:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{panels} {value}")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].set_ylabel("training perplexity")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
