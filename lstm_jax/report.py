"""The inspection report: :mod:`lstm_jax.inspect`'s analyses of one run (and of runs to compare) as
a JSON-able dict, and that dict as one self-contained HTML page (:mod:`lstm_jax.report_page`).
Reading the text and writing the files are here too; the flags are :func:`lstm_jax.inspect.main`'s."""

from __future__ import annotations

import base64
import json
import os

import numpy as np

from lstm_jax import cells, checkpoint, configs, data, inspect
from lstm_jax.errors import UserError

SHOW_CHARS = 500  # tokens whose every unit the page embeds (one byte each): the page's size


def read_text(run, split: str = "val", path: str | None = None, max_chars: int = 20_000):
    """The token ids to trace and what they are: ``split`` of the run's corpus or the file ``path``
    (read with the run's vocabulary), the first ``max_chars`` tokens."""
    if max_chars < 2:
        raise UserError(f"--max_chars must be at least 2, got {max_chars}")
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"--path {path} is not a file")
        try:
            ids, missing = data.encode_file(path, run.vocab)
        except OSError as e:
            raise UserError(f"cannot read --path {path} ({e.strerror or e})") from None
        source = dict(path=path, unknown_tokens=int(sum(missing.values())))
    else:
        corpus = data.from_config(run.config.data)
        start, end = corpus.splits[split]
        if end <= start:
            raise UserError(f"the run has no {split} split (config.data.{split}_fraction is 0); "
                            "use --split with another split or --path FILE")
        ids, source = corpus.ids[start:end], dict(corpus=corpus.source, split=split, start=int(start))
    if len(ids) < 2:
        raise UserError(f"the text has {len(ids)} tokens once read like the training text; need at least 2")
    ids = np.asarray(ids[:max_chars], np.int32)
    return ids, {**source, "num_tokens": len(ids)}


def _round(a, digits=4):
    return np.round(np.asarray(a, np.float64), digits).tolist()


def analyse(run, ids, workdir: str, top: int = 5, max_distance: int = 100, num_windows: int = 64):
    """Everything the JSON holds for one run, and its trace (for the page)."""
    tr = inspect.trace(run, ids, top_k=5)
    tokens = run.vocab.to_tokens(ids)
    features = inspect.text_features(tokens, words=run.vocab.token == "word")
    constant = [f for f, v in features.items() if v.std() == 0]  # e.g. no bracket in the text: no r
    features = {f: v for f, v in features.items() if f not in constant}
    corr = inspect.correlations(tr.signals, features)
    gates = cells.get(run.model.cell).gate_signals
    sat = inspect.saturation(tr.signals, gates)
    flow = inspect.gradient_flow(run, ids, min(max_distance, len(ids) - 2), num_windows)
    loss = float(np.nanmean(tr.loss)) if len(ids) > 1 else float("nan")
    out = {
        "run": {"workdir": workdir, "step": run.step, "cell": run.model.cell, "model": run.model.variant,
                "num_layers": run.model.num_layers, "num_hiddens": run.model.num_hiddens,
                "num_params": int(run.model.num_params()), "config": configs.as_dict(run.config)},
        "scores": {"loss_nats": round(loss, 4), "bits": round(loss / np.log(2), 4), "perplexity": round(float(np.exp(loss)), 3)},
        "signals": [{name: int(a.shape[1]) for name, a in layer.items()} for layer in tr.signals],
        "features": list(features), "constant_features": constant,
        "units": inspect.rank_units(corr, top),
        "saturation": [{**s, "left": _round(s["left"]), "right": _round(s["right"])} for s in sat],
        "gradient_flow": {"distance": flow.distance.tolist(), "num_windows": flow.num_windows,
                          "curves": [{"layer": l, "field": f, "norm": [float(f"{v:.4g}") for v in n]}
                                     for (l, f), n in flow.norms.items()]},
    }
    return out, tr


def summary(sat: list[dict]) -> list[dict]:
    """Per layer and gate: the mean fraction of steps its units are left- and right-saturated."""
    return [{"layer": s["layer"], "gate": s["gate"], "left": round(float(np.mean(s["left"])), 4),
             "right": round(float(np.mean(s["right"])), 4)} for s in sat]


def page_data(report: dict, tr: inspect.Trace, vocab, show: int = SHOW_CHARS) -> dict:
    """What the page draws beyond the JSON: the first ``show`` tokens, every unit of every signal there
    (int8, scaled per unit by its largest |value|, base64), the top-5 next tokens and the loss."""
    n = min(show, len(tr.tokens))
    acts = {}
    for l, layer in enumerate(tr.signals):
        for name, a in layer.items():
            a = np.asarray(a[:n], np.float32)
            scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
            q = np.round(a / scale * 127).astype(np.int8)
            acts[f"{l}/{name}"] = {"width": int(a.shape[1]), "scale": _round(scale, 5),
                                   "data": base64.b64encode(q.tobytes()).decode()}
    return {**report, "text": vocab.to_tokens(tr.tokens[:n]), "word_level": vocab.token == "word",
            "activations": acts, "vocab": list(vocab.idx_to_token),
            "top_ids": tr.top_ids[:n].tolist(), "top_probs": _round(tr.top_probs[:n], 3),
            "loss": [None if np.isnan(v) else round(float(v), 3) for v in tr.loss[:n]]}


def embed_json(obj) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` survives, so
    the text cannot close the element or start markup."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html(data: dict) -> str:
    from lstm_jax.report_page import PAGE

    return PAGE.replace("/*DATA*/", embed_json(data), 1)


def _load(workdir: str, best: bool, warn):
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist")
    return checkpoint.load_model(workdir, best=best, warn=warn)


def build(workdir: str, split: str = "val", path: str | None = None, max_chars: int = 20_000,
          best: bool = False, compare: tuple[str, ...] = (), show: int = SHOW_CHARS, top: int = 5,
          max_distance: int = 100, num_windows: int = 64, warn=None) -> tuple[dict, str]:
    """The JSON report and the HTML page of ``workdir``, with ``compare``'s runs' gradient flow and
    saturation summaries beside it (each traced on the same text, read with its own vocabulary)."""
    run = _load(workdir, best, warn)
    ids, source = read_text(run, split, path, max_chars)
    report, tr = analyse(run, ids, workdir, top, max_distance, num_windows)
    report["traced"] = {**source, "checkpoint": "best" if best else "latest"}
    report["compare"] = []
    for other in (workdir, *compare) if compare else ():
        if other == workdir:
            r = report
        else:
            o = _load(other, best, warn)
            r, _ = analyse(o, read_text(o, split, path, max_chars)[0], other, top, max_distance, num_windows)
        report["compare"].append({"workdir": other, "cell": r["run"]["cell"], "scores": r["scores"],
                                  "gradient_flow": r["gradient_flow"], "saturation": summary(r["saturation"])})
    return report, html(page_data(report, tr, run.vocab, show))


def write(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e})") from None
