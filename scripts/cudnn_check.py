"""Does JAX's cuDNN LSTM (``jax.experimental.rnn``) run here, and how fast is it against lstm_jax's paths?

  python scripts/cudnn_check.py            # on a GPU: forward + backward of a 2-layer LSTM at bench sizes
  python scripts/cudnn_check.py --quick    # tiny sizes; on CPU it reports that the binding is GPU-only

Times one training-shaped forward and backward pass (loss = mean of the outputs)
for cuDNN's LSTM and for lstm_jax's fast and reference recurrences at the same
sizes, medians of a few runs after a warm-up, and prints one line per size.
Exit status 0 whether or not cuDNN is available: that it is not is an answer too.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZES = {"shakespeare_small": (64, 64, 256, 2, 65), "shakespeare": (64, 100, 512, 2, 65),
         "word": (20, 20, 200, 2, 200), "d2l": (32, 35, 256, 1, 28)}
QUICK = {"tiny": (4, 5, 16, 2, 8)}


def timed(fn, *args, repeats=5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def ours(impl: str, B, T, H, L, D):
    from lstm_jax import models
    from lstm_jax.cells.lstm import LSTMState

    model = models.LanguageModel("scratch", D, H, impl=impl, num_layers=L, embed_dim=D)
    params = model.init(jax.random.key(0))
    state = LSTMState(jnp.zeros((B, L, H)), jnp.zeros((B, L, H)))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    grad = jax.jit(jax.grad(lambda p: model.apply(p, state, tokens)[0].mean()))
    return timed(grad, params)


def cudnn(B, T, H, L, D):
    from jax.experimental import rnn

    x = jax.random.normal(jax.random.key(0), (B, T, D))
    h0 = c0 = jnp.zeros((L, B, H))
    weights = rnn.init_lstm_weight(jax.random.key(1), D, H, L, False)
    lengths = jnp.full((B,), T, jnp.int32)
    loss = lambda w: rnn.lstm(x, h0, c0, w, lengths, D, H, L, 0.0, False)[0].mean()
    return timed(jax.jit(jax.grad(loss)), weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, jax {jax.__version__}")
    for name, (B, T, H, L, D) in (QUICK if args.quick else SIZES).items():
        tokens = B * T
        row = {impl: ours(impl, B, T, H, L, D) for impl in ("fast", "reference")}
        try:
            row["cudnn"] = cudnn(B, T, H, L, D)
        except Exception as e:  # noqa: BLE001 - GPU-only, and experimental: any failure is the answer
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            row["cudnn"] = f"unavailable ({type(e).__name__}: {first})"
        cells = [f"{k} {tokens / v:,.0f} tokens/s" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
        print(f"{name} ({B}x{T}, {L} x {H}, input {D}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
