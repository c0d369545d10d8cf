"""Inside a trained network: every cell's named signals over a text, units against features of the
text, gate saturation and gradient flow; the CLI writes them as one HTML page and a JSON file.

  python -m lstm_jax.inspect --workdir runs/shakespeare --out report.html --json report.json
  python -m lstm_jax.inspect --workdir runs/shakespeare --path play.txt --max_chars 5000 --best
  python -m lstm_jax.inspect --workdir runs/lstm --compare runs/gru,runs/rnn --out cells.html

The text is the validation split of the run's corpus (--split) or a file (--path, read with the
checkpoint's vocabulary), cut to --max_chars tokens and traced from a zero state. The page is
self-contained (no network); the text is embedded as data, never as markup.

As a library (pure functions of a loaded run and token ids; :mod:`lstm_jax.report` assembles them):
:func:`trace`, :func:`gradient_flow`, :func:`text_features`, :func:`correlations`,
:func:`rank_units`, :func:`saturation`. Shapes: T time steps, B windows, W a signal's width, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import cells, models
from lstm_jax.regularize import Dropout

CHUNK = 256  # time steps per compiled call of the trace: memory is bounded by this, not by T


class Trace(NamedTuple):
    tokens: np.ndarray  # (T,) the ids traced, from a zero state
    signals: list  # per layer: {name: (T, W)}, in the cell's order
    top_ids: np.ndarray  # (T, k) the most likely next tokens, most likely first
    top_probs: np.ndarray  # (T, k) their probabilities
    loss: np.ndarray  # (T,) -log p(tokens[t + 1]) in nats; nan at the last step (nothing follows it)


def scratch_params(run) -> dict:
    """The run's parameters under the cell's names in float32 (a concise model's are re-keyed)."""
    params = run.params
    if run.model.variant == "concise":
        from lstm_jax.concise import concise_to_scratch

        params = concise_to_scratch(params, run.model.cell)
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def named_step(cell: cells.Cell):
    """``(params, state, x_t) -> (state, output, signals)``; a cell without ``signals`` shows its state."""
    if cell.signals is None:
        def step(p, s, x_t):
            new, out = cell.step(p, s, x_t)
            return new, out, new._asdict()
        return step

    def step(p, s, x_t):
        named = cell.signals(p, s, x_t)
        new = cell.State(*(named[f] for f in cell.State._fields))
        return new, new[0], named
    return step


def _layers(params, state, x, cell_name, sizes, perturb=None):
    """Every layer over time (``x``: (T, B) ids or (T, B, D)): the last layer's outputs (T, B, W), each
    layer's signals and final state. ``perturb[l]``: a State of (T, B, W) added to layer l's new states."""
    cell = cells.get(cell_name)
    step, named, finals = named_step(cell), [], []
    for l in range(models.num_layers(params)):
        p = models.layer(params, l)

        def body(s, inputs, p=p):
            x_t, e_t = inputs
            new, out, sig = step(p, s, x_t)
            if e_t is not None:
                new = cell.State(*(a + e for a, e in zip(new, e_t)))
                out = new[0]
            return new, (out, sig)

        e = None if perturb is None else perturb[l]
        s0 = cell.State(*models.layer_state(state, l, sizes[l]))
        s, (x, sig) = jax.lax.scan(body, s0, (x, e))
        named.append(sig)
        finals.append(s)
    return x, named, models.stack_layers(finals, state)


@functools.partial(jax.jit, static_argnames=("cell", "sizes", "k"))
def _trace_chunk(params, state, x_T, y_T, cell, sizes, k):
    x = models.layer_input(params, x_T[:, None], None, Dropout())
    h, named, state = _layers(params, state, x, cell, sizes)
    W_hq, b_q = models.head(params)
    logp = jax.nn.log_softmax(h[:, 0] @ W_hq + b_q)
    top_logp, top_ids = jax.lax.top_k(logp, k)
    loss = -jnp.take_along_axis(logp, y_T[:, None], axis=1)[:, 0]
    return state, [{n: a[:, 0] for n, a in sig.items()} for sig in named], top_ids, jnp.exp(top_logp), loss


def trace(run, tokens, top_k: int | None = None, chunk: int = CHUNK) -> Trace:
    """Every named signal of every layer at every step of ``tokens`` (from a zero state), the next-token
    distribution (its ``top_k`` most likely tokens; None: all, sorted) and the per-step loss. Jitted
    per chunk of ``chunk`` steps with the state carried, so memory on the device does not grow with T."""
    ids = np.asarray(tokens, np.int32)
    T = len(ids)
    params, V = scratch_params(run), run.model.vocab_size
    k = V if top_k is None else min(top_k, V)
    state = jax.tree.map(lambda a: a.astype(jnp.float32), run.model.initial_state(1))
    targets = np.concatenate([ids[1:], [0]]).astype(np.int32)
    parts = []
    for start in range(0, T, chunk):
        x, y = (np.zeros(chunk, np.int32) for _ in range(2))
        n = min(chunk, T - start)
        x[:n], y[:n] = ids[start:start + n], targets[start:start + n]
        state, sig, top_ids, top_probs, loss = _trace_chunk(params, state, x, y, run.model.cell,
                                                            run.model.layer_sizes, k)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[:n], (sig, top_ids, top_probs, loss)))
    sig, top_ids, top_probs, loss = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    loss[T - 1] = np.nan
    order = signal_names(run.model, params)  # jax returns dicts sorted by key
    return Trace(ids, [{n: layer[n] for n in order if n in layer} for layer in sig], top_ids, top_probs, loss)


def signal_names(model, params) -> list[str]:
    """The cell's signal names in the order its ``signals`` writes them (the paper's)."""
    cell, names = cells.get(model.cell), []

    def probe(params):
        x = models.layer_input(params, jnp.zeros((1, 1), jnp.int32), None, Dropout())[0]
        p = models.layer(params, 0)
        state = cell.State(*(jnp.zeros((1, n)) for n in model.layer_sizes[0]))
        names.extend(named_step(cell)(p, state, x)[2])
        return 0

    jax.eval_shape(probe, params)
    return names


class GradientFlow(NamedTuple):
    distance: np.ndarray  # (K + 1,) k = 0 .. K
    norms: dict  # (layer, state field) -> (K + 1,) mean over windows of ||dL_t / d field_{t-k}||
    num_windows: int


@functools.partial(jax.jit, static_argnames=("cell", "sizes"))
def _window_norms(params, state, x_BxW, y_B, cell, sizes):
    """Per layer and state field, ||dL_t/d s_{t-k}|| (W, B): the gradient of each window's last loss
    with respect to a zero perturbation added to every state after each step."""
    c = cells.get(cell)
    W, B = x_BxW.shape[1], x_BxW.shape[0]
    eps = [c.State(*(jnp.zeros((W, B, n), state[0].dtype) for n in widths)) for widths in sizes]

    def loss(eps):
        x = models.layer_input(params, x_BxW.T, None, Dropout())
        h, _, _ = _layers(params, state, x, cell, sizes, eps)
        W_hq, b_q = models.head(params)
        logp = jax.nn.log_softmax(h[-1] @ W_hq + b_q)
        return -jnp.take_along_axis(logp, y_B[:, None], axis=1).sum()

    grads = jax.grad(loss)(eps)
    return [{f: jnp.linalg.norm(g, axis=-1) for f, g in s._asdict().items()} for s in grads]


def gradient_flow(run, tokens, max_distance: int = 100, num_windows: int = 64) -> GradientFlow:
    """How fast ``||dL_t / dh_{t-k}||`` (and of every other state field, ``c`` for the LSTMs) decays with
    the distance k, per layer, averaged over ``num_windows`` positions t spread over ``tokens``. Each
    window starts from the state the model reaches by reading the text before it."""
    ids = np.asarray(tokens, np.int32)
    K = max_distance
    if len(ids) < K + 2:
        raise ValueError(f"gradient flow over {K} steps needs at least {K + 2} tokens, got {len(ids)}")
    stride = max(1, (len(ids) - K - 1) // num_windows)
    starts = [stride * j for j in range(num_windows) if stride * j + K + 1 < len(ids)]
    advance = jax.jit(lambda p, s, x: run.model.apply(p, s, x)[1])
    state, states = run.model.initial_state(1), []
    for j, start in enumerate(starts):
        if j:
            state = advance(run.params, state, ids[None, start - stride:start])
        states.append(jax.tree.map(lambda a: a.astype(jnp.float32), state))
    stacked = jax.tree.map(lambda *a: jnp.concatenate(a), *states)
    windows = np.stack([ids[s:s + K + 1] for s in starts])
    targets = np.asarray([ids[s + K + 1] for s in starts], np.int32)
    per_layer = _window_norms(scratch_params(run), stacked, windows, targets, run.model.cell, run.model.layer_sizes)
    norms = {(l, f): np.asarray(n).mean(axis=1)[::-1] for l, layer in enumerate(per_layer) for f, n in layer.items()}
    return GradientFlow(np.arange(K + 1), norms, len(starts))


# --- features of the text itself, one value per token

SENTENCE_ENDS = ("<eos>", ".", "!", "?")


def text_features(tokens: list[str], words: bool = False) -> dict[str, np.ndarray]:
    """Per token: for characters ``position_in_line`` (characters since the last newline, 0 on it),
    ``line_end_ahead`` (characters to the next newline), ``in_word`` (a letter), ``in_parentheses``
    (inside an open bracket), ``in_quotes`` (after an odd number of double quotes) and
    ``in_speaker_name`` (on a line that ends with a colon: a play's speaker); for words
    ``position_in_sentence`` (words since the last sentence end)."""
    T, t = len(tokens), np.arange(len(tokens))
    if words:
        end = np.isin(np.asarray(tokens, object), SENTENCE_ENDS)
        return {"position_in_sentence": (t - np.maximum.accumulate(np.where(end, t, -1))).astype(np.float32)}
    text = "".join(tok if len(tok) == 1 else "\ufffd" for tok in tokens)  # <unk>: one character
    newline = np.frombuffer(text.encode("utf-32-le"), np.uint32) == 10
    last = np.maximum.accumulate(np.where(newline, t, -1))
    following = np.minimum.accumulate(np.where(newline, t, T)[::-1])[::-1]
    depth = np.cumsum([(ch in "([{") - (ch in ")]}") for ch in text])
    depth = depth - np.minimum(np.minimum.accumulate(depth), 0)  # a stray closing bracket does not go below 0
    speaker = np.array([following[i] > 0 and text[following[i] - 1] == ":" for i in range(T)]) if T else np.zeros(0)
    out = {"position_in_line": t - last, "line_end_ahead": following - t,
           "in_word": np.array([ch.isalpha() for ch in text]), "in_parentheses": depth > 0,
           "in_quotes": np.cumsum([ch == '"' for ch in text]) % 2 == 1,
           "in_speaker_name": speaker & ~newline}
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def correlations(signals: list, features: dict[str, np.ndarray]) -> dict:
    """Pearson's r of every unit of every signal with every feature: ``(layer, signal) -> {feature:
    (W,)}``; a constant unit or feature correlates 0."""
    def standardized(a):
        a = np.asarray(a, np.float64)
        sd = a.std(axis=0)
        return np.where(sd > 0, (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1), 0.0)

    feats = {f: standardized(v) for f, v in features.items()}
    return {(l, name): {f: standardized(a).T @ z / len(z) for f, z in feats.items()}
            for l, layer in enumerate(signals) for name, a in layer.items()}


def rank_units(corr: dict, top: int = 5) -> list[dict]:
    """The ``top`` units per feature by |r|, over every layer and signal: ``{layer, signal, unit,
    feature, correlation}``, strongest first within each feature."""
    out = []
    features = next(iter(corr.values())).keys() if corr else ()
    for f in features:
        rows = [(abs(r), l, s, u, r) for (l, s), by in corr.items() for u, r in enumerate(by[f])]
        rows.sort(key=lambda row: -row[0])
        out += [dict(layer=l, signal=s, unit=u, feature=f, correlation=float(r)) for _, l, s, u, r in rows[:top]]
    return out


def saturation(signals: list, gates, low: float = 0.1, high: float = 0.9) -> list[dict]:
    """Karpathy et al. 2015's Figure 3: per layer and gate, each unit's fraction of steps left-saturated
    (< ``low``) and right-saturated (> ``high``)."""
    return [dict(layer=l, gate=g, left=(layer[g] < low).mean(0).tolist(), right=(layer[g] > high).mean(0).tolist())
            for l, layer in enumerate(signals) for g in gates if g in layer]


def main() -> None:
    import json
    import os
    import sys

    from absl import flags

    from lstm_jax import cli, report
    from lstm_jax.errors import UserError

    flags.DEFINE_string("workdir", None, "A training run's --workdir (holds checkpoints/).")
    flags.DEFINE_enum("split", "val", ["train", "val", "test"], "Which split of the run's corpus to trace.")
    flags.DEFINE_string("path", None, "Trace this text file instead (read with the checkpoint's vocabulary).")
    flags.DEFINE_integer("max_chars", 20_000, "Trace the first N tokens (correlations, saturation and gradient "
                         "flow use them all).")
    flags.DEFINE_integer("show_chars", report.SHOW_CHARS, "Embed every unit's activation for the first N tokens "
                         "(the coloured text; one byte per unit and token: the page's size).")
    flags.DEFINE_boolean("best", False, "Use the best-validation checkpoint (best/) instead of the latest.")
    flags.DEFINE_string("out", "report.html", "Where to write the HTML report.")
    flags.DEFINE_string("json", "report.json", "Where to write the JSON report.")
    flags.DEFINE_multi_string("compare", [], "Other workdirs whose gradient flow and saturation to overlay, "
                              "traced on the same text: repeat the flag or separate them with commas.")
    flags.DEFINE_integer("top", 5, "Units listed per feature.")
    flags.DEFINE_integer("max_distance", 100, "Gradient flow up to this many steps back.")
    flags.DEFINE_integer("windows", 64, "Gradient flow: the positions averaged over.")
    flags.mark_flag_as_required("workdir")
    F = flags.FLAGS

    def run():
        if min(F.show_chars, F.top, F.max_distance, F.windows) < 1:
            raise UserError("--show_chars, --top, --max_distance and --windows must be >= 1")
        compare = tuple(d for arg in F.compare for d in arg.split(",") if d)
        out, page = report.build(F.workdir, F.split, F.path, F.max_chars, F.best, compare, F.show_chars, F.top,
                                 F.max_distance, F.windows, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        report.write(F.json, json.dumps(out, indent=1, allow_nan=False) + "\n")
        report.write(F.out, page)
        best = {}
        for u in out["units"]:
            best.setdefault(u["feature"], u)
        for u in best.values():
            print(f"{u['feature']}: layer {u['layer']} {u['signal']}[{u['unit']}] r = {u['correlation']:+.3f}")
        print(f"traced {out['traced']['num_tokens']:,} tokens: {out['scores']['loss_nats']:.4f} nats/token; "
              f"wrote {F.out} ({os.path.getsize(F.out) / 1e6:.2f} MB) and {F.json}")

    cli.run(run, __doc__)


if __name__ == "__main__":
    main()
