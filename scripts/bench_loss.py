"""The cross-entropy's backward pass, A/B: a hand-written derivative (``cross_entropy`` below, tried for word
heads) against autodiff of optax's ``softmax_cross_entropy_with_integer_labels`` (what training uses), inside a
word model's loss and gradient.

  python scripts/bench_loss.py --json docs/data/bench_loss.json

Per shape: the scratch model as training runs it (embedding, 2 layers, the engine), ``jax.value_and_grad``
of the mean cross-entropy, jitted; the two losses take turns round by round, warm-up rounds not counted,
median tokens/s. Shapes: Zaremba's small model on the Penn Treebank (V = 10,000) and on WikiText-2's
vocabulary (V = 33,278), and a character model (V = 65), where the logits are small.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax import models

SHAPES = {  # batch, steps, hidden, layers, vocabulary, embedding
    "ptb": (20, 20, 200, 2, 10_000, 200),
    "wikitext2": (20, 20, 200, 2, 33_278, 200),
    "char": (64, 64, 256, 2, 65, 0),
}


@jax.custom_jvp
def cross_entropy(logits_BxTxV: jax.Array, Y_BxT: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over all targets (optax's, averaged), differentiated by hand: the
    tangent is ``mean(softmax . dlogits - dlogits[target])``, so reverse mode's gradient is one pass,
    ``(softmax - onehot) / N``, over a softmax kept from the forward pass (word heads: V = 10,000+)."""
    lse = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    return (lse - jnp.take_along_axis(logits_BxTxV, Y_BxT[..., None], axis=-1)[..., 0]).mean()


@cross_entropy.defjvp
def _cross_entropy_jvp(primals, tangents):
    (logits, Y), (dlogits, _) = primals, tangents
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    softmax = jnp.exp(logits - lse)
    pick = lambda a: jnp.take_along_axis(a, Y[..., None], axis=-1)[..., 0]
    return (lse[..., 0] - pick(logits)).mean(), (jnp.sum(softmax * dlogits, axis=-1) - pick(dlogits)).mean()


def optax_loss(logits, Y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def step_fn(model, loss):
    def f(params, state, X, Y):
        logits, _ = model.apply(params, state, X)
        return loss(logits, Y)

    return jax.jit(jax.value_and_grad(f))


def bench(name, rounds, warmup, per_round):
    B, T, H, L, V, E = SHAPES[name]
    model = models.LanguageModel("scratch", V, H, num_layers=L, embed_dim=E)
    params, state = model.init(jax.random.key(0)), model.initial_state(B)
    X = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    Y = jnp.roll(X, -1, 1)
    fns = {"hand-written": step_fn(model, cross_entropy), "optax autodiff": step_fn(model, optax_loss)}
    values = {k: f(params, state, X, Y) for k, f in fns.items()}
    a, b = values.values()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)  # the same loss
    speeds = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(per_round):
                out = f(params, state, X, Y)
            jax.block_until_ready(out)
            if r >= warmup:
                speeds[k].append(per_round * B * T / (time.perf_counter() - start))
    med = {k: float(np.median(v)) for k, v in speeds.items()}
    return {"shape": name, "batch": B, "steps": T, "hidden": H, "layers": L, "vocab": V, "embed": E,
            "tokens_per_sec_median": med, "rounds": speeds, "own_over_optax": med["hand-written"] / med["optax autodiff"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="ptb,wikitext2,char")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--per-round", type=int, default=10, help="gradient evaluations per round")
    p.add_argument("--json")
    a = p.parse_args()
    results = []
    for name in a.shapes.split(","):
        if name not in SHAPES:
            p.error(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
        r = bench(name, a.rounds, a.warmup, a.per_round)
        print(f"{name}: hand-written {r['tokens_per_sec_median']['hand-written']:,.0f} tokens/s, optax autodiff "
              f"{r['tokens_per_sec_median']['optax autodiff']:,.0f}: {r['own_over_optax']:.3f}x", file=sys.stderr)
        results.append(r)
    if a.json:
        from bench import machine_info  # the CPU beside the numbers

        with open(a.json, "w") as f:
            json.dump({"machine": machine_info(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
