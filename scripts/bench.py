"""Training speed, side by side: the JAX LSTMs against PyTorch's ``nn.LSTM``, in one process.

  python scripts/bench.py                                  # d2l and big
  python scripts/bench.py --configs shakespeare,shakespeare_small,word --rounds 5
  python scripts/bench.py --configs d2l --rounds 3 --json bench.json
  python scripts/bench.py --configs shakespeare_small --impls torch,scratch --hiddens 128,256,512,768,1024 \
      --plot docs/img/hidden_size.png                      # tokens/s against hidden size

For every config each implementation trains on the same minibatches (d2l's
sequential partitioning, state carried across minibatches) with the same loss
(mean cross-entropy), clipping (global norm 1) and SGD. The JAX models run the
training CLI's compiled train step (``experiment.Programs``). A round is about
``--round-seconds`` of minibatches; the implementations take turns round by
round, so drift in the machine's load hits all of them alike; warm-up rounds
are not counted.

Implementations (``--impls``; the torch ones only when torch is importable, ``pip install -e '.[dev]'``):

  scratch            the scratch model as trained by default (the fast path)
  scratch_reference  the scratch model by autodiff of lstm.lstm_step (lstm_impl="reference")
  concise            flax's OptimizedLSTMCell under nn.RNN (the concise model's default)
  concise_fast       flax's parameters through the fast path (lstm_impl="fast")
  torch              torch.nn.LSTM(num_layers=L) + nn.Linear head, on one-hot inputs or, where the
                     config has an embedding (word), nn.Embedding

``flops_per_token``: matrix products only, forward and backward (3x the
forward's: the input and weight gradients), the one-hot input counted as the
row lookup it is (0 FLOPs); ``matmul_peak_gflops``: the faster of a 2048 x 2048
float32 product through XLA and through PyTorch (``matmul_gflops`` has both),
measured in the same run, so ``fraction_of_peak`` compares with the machine.
``steal_percent_median``: of the CPU time in an implementation's rounds, the
share the hypervisor of a virtual machine kept its CPUs waiting (/proc/stat).
With ``--keep-cores-awake``, lstm_jax's rounds run with the idle-priority
spinners of ``config.keep_cores_awake`` (``lstm_jax/spinners.py``), PyTorch's
without them, as its users run it (its OpenMP threads spin by themselves). ``first_step_s``: for JAX, compiling plus the first minibatch on the
host; for torch, the first minibatch.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time

import numpy as np

from lstm_jax import allocator, spinners

# name: batch, steps, hidden, layers, training tokens (0: all), corpus, tokens, normalize, embedding
CONFIGS = {
    "d2l": dict(batch_size=32, num_steps=35, num_hiddens=256, num_layers=1, max_tokens=10000),
    "big": dict(batch_size=256, num_steps=35, num_hiddens=512, num_layers=1, max_tokens=40000),
    "shakespeare": dict(batch_size=64, num_steps=100, num_hiddens=512, num_layers=2, max_tokens=0,
                        corpus="tinyshakespeare", normalize="none"),
    "shakespeare_small": dict(batch_size=64, num_steps=64, num_hiddens=256, num_layers=2, max_tokens=0,
                              corpus="tinyshakespeare", normalize="none"),
    # Zaremba et al.'s small model's shape: word embeddings as wide as the layers.
    "word": dict(batch_size=20, num_steps=20, num_hiddens=200, num_layers=2, max_tokens=0, token="word",
                 embed_dim=200),
    "shakespeare_1layer": dict(batch_size=64, num_steps=100, num_hiddens=512, num_layers=1, max_tokens=0,
                              corpus="tinyshakespeare", normalize="none"),
    "big_2layer": dict(batch_size=256, num_steps=35, num_hiddens=512, num_layers=2, max_tokens=40000),
    "tiny": dict(batch_size=4, num_steps=5, num_hiddens=16, num_layers=1, max_tokens=300),  # the smoke test
}
JAX_IMPLS = ("scratch", "scratch_reference", "concise", "concise_fast")
TORCH_IMPLS = ("torch",)
DEFAULT_IMPLS = ("torch", "scratch", "scratch_reference", "concise", "concise_fast")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_config(name: str, impl: str):
    from lstm_jax import configs

    c, spec = configs.get_base_config(), CONFIGS[name]
    for key in ("batch_size", "num_steps", "num_hiddens", "num_layers"):
        c[key] = spec[key]
    c.embed_dim = spec.get("embed_dim", 0)
    c.data.max_tokens = spec["max_tokens"]
    c.data.corpus = spec.get("corpus", "timemachine")
    c.data.normalize = spec.get("normalize", "d2l")
    c.data.token = spec.get("token", "char")
    c.batches_per_call = 8
    c.model = "concise" if impl.startswith("concise") else "scratch"
    c.lstm_impl = {"scratch": "fast", "concise_fast": "fast"}.get(impl, "reference")
    return c


def flops_per_token(c, vocab_size: int) -> int:
    H, L, E = c.num_hiddens, c.num_layers, c.embed_dim
    # input projections (layer 0's only with an embedding), recurrences, head
    forward = E * 4 * H + (L - 1) * H * 4 * H + L * H * 4 * H + H * vocab_size
    return 3 * 2 * forward


class JaxRunner:
    def __init__(self, config_name: str, impl: str):
        import jax

        from lstm_jax.experiment import Experiment, Programs

        self.exp = exp = Experiment.from_config(make_config(config_name, impl))
        self.ts = exp.init_train_state()
        jax.block_until_ready(self.ts)
        start = time.perf_counter()
        self.programs = Programs(exp, self.ts)
        self.compile_s = self.programs.compile_s
        self.key, self.epoch, self.done, self.batches = exp.dropout_key, 0, 0, exp.epoch_batches(0)
        self.state = exp.model.initial_state(exp.config.batch_size)
        self.run(1)
        self.first_step_s = time.perf_counter() - start

    def run(self, num_batches: int):
        """Train ``num_batches`` minibatches (epochs wrap around); returns (tokens, seconds)."""
        c, N = self.exp.config, self.exp.block_length
        X = np.zeros((N, c.batch_size, c.num_steps), np.int32)
        Y = np.zeros_like(X)
        start, left = time.perf_counter(), num_batches
        while left:
            n = min(N, left, self.exp.batches_per_epoch - self.done)
            block = self.batches.block(self.done, n)
            X[:n], Y[:n] = block.X, block.Y
            self.ts, self.state, m = self.programs.train(self.ts, self.state, X, Y, np.int32(n), self.key)
            loss = np.asarray(m["loss"])[:n]
            left, self.done = left - n, self.done + n
            if self.done == self.exp.batches_per_epoch:
                self.epoch, self.done = self.epoch + 1, 0
                self.batches = self.exp.epoch_batches(self.epoch)
                self.state = self.exp.model.initial_state(c.batch_size)
        if not np.all(np.isfinite(loss)):
            raise RuntimeError("the loss is not finite")
        return num_batches * c.batch_size * c.num_steps, time.perf_counter() - start


class TorchRunner:
    """The same minibatches, loss, clipping and SGD with ``torch.nn.LSTM`` (CPU, float32)."""

    compile_s = None

    def __init__(self, config_name: str, impl: str):
        import torch

        from lstm_jax.experiment import Experiment

        self.torch = torch
        torch.manual_seed(0)
        start = time.perf_counter()
        self.exp = exp = Experiment.from_config(make_config(config_name, "scratch"))
        c = exp.config
        self.V = V = len(exp.corpus.vocab)
        self.embed = torch.nn.Embedding(V, c.embed_dim) if c.embed_dim else None
        self.lstm = torch.nn.LSTM(c.embed_dim or V, c.num_hiddens, num_layers=c.num_layers)
        self.head = torch.nn.Linear(c.num_hiddens, V)
        self.params = [*(self.embed.parameters() if self.embed else []), *self.lstm.parameters(),
                       *self.head.parameters()]
        self.optimizer = torch.optim.SGD(self.params, lr=c.learning_rate)
        self.epoch, self.done, self.state = 0, 0, None
        self.batches = exp.epoch_batches(0)
        self.run(1)
        self.first_step_s = time.perf_counter() - start

    def run(self, num_batches: int):
        torch, F = self.torch, self.torch.nn.functional
        c = self.exp.config
        start = time.perf_counter()
        for _ in range(num_batches):
            b = self.batches.block(self.done, 1)
            X = torch.from_numpy(b.X[0].T.astype(np.int64))  # time-major, as nn.LSTM's default
            Y = torch.from_numpy(b.Y[0].T.astype(np.int64))
            state = None if self.state is None else tuple(s.detach() for s in self.state)
            inputs = self.embed(X) if self.embed is not None else F.one_hot(X, self.V).float()
            out, self.state = self.lstm(inputs, state)
            loss = F.cross_entropy(self.head(out).reshape(-1, self.V), Y.reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            self.optimizer.step()
            self.done += 1
            if self.done == self.exp.batches_per_epoch:
                self.epoch, self.done, self.state = self.epoch + 1, 0, None
                self.batches = self.exp.epoch_batches(self.epoch)
        if not np.isfinite(loss.item()):
            raise RuntimeError("the loss is not finite")
        return num_batches * c.batch_size * c.num_steps, time.perf_counter() - start


def matmul_gflops(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """A large float32 product's rate through XLA and, where torch is importable, through
    PyTorch's BLAS (MKL): median of ``repeats``, the two taking turns.

    The machine's peak is the faster of them: XLA's own product alone would
    flatter XLA (on a 2-core Ice Lake Xeon MKL's was 27% faster).
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    products = {"xla": lambda: jax.block_until_ready(f(a, a))}
    if torch_available():
        import torch

        t = torch.from_numpy(np.array(a))
        products["torch"] = lambda: torch.mm(t, t)
    times = {name: [] for name in products}
    for r in range(repeats + 1):
        for name, product in products.items():
            start = time.perf_counter()
            product()
            if r:  # the first is a warm-up
                times[name].append(time.perf_counter() - start)
    return {name: 2 * n ** 3 / float(np.median(t)) / 1e9 for name, t in times.items()}


def machine_info() -> dict:
    import flax
    import jax
    import optax

    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "cpus": os.cpu_count(), "platform": jax.devices()[0].platform, "cpu": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        info["cpu_flags"] = " ".join(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except (OSError, StopIteration):
        pass
    if torch_available():
        import torch

        info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
    return info


def cpu_ticks() -> tuple[int, int]:
    """(all, steal) CPU ticks so far, from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[7]
    except (OSError, ValueError, IndexError):
        return 0, 0


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Of the CPU time between two ``cpu_ticks()``, the share a hypervisor gave to others while this
    machine's CPUs wanted to run: a round with much of it was slowed by the host, not by the code."""
    total = after[0] - before[0]
    return 100.0 * (after[1] - before[1]) / total if total > 0 else 0.0


def bench_config(name: str, impls: list[str], rounds: int, warmup: int, round_seconds: float, peak: float,
                 awake: bool, log) -> list[dict]:
    runners = {}
    for impl in impls:
        log(f"[{name}] setting up {impl} ...")
        runners[impl] = (TorchRunner if impl in TORCH_IMPLS else JaxRunner)(name, impl)
    # Minibatches per round: about round_seconds, from one timed minibatch of each (the slowest decides).
    batch_s = max(r.run(1)[1] for r in runners.values())
    per_round = max(1, round(round_seconds / batch_s))
    speeds = {impl: [] for impl in impls}
    steal = {impl: [] for impl in impls}
    load = []
    for r in range(warmup + rounds):
        for impl, runner in runners.items():
            # lstm_jax's turns with the spinners its training CLI starts, PyTorch's as PyTorch runs.
            with spinners.keep_cores_awake(awake and impl in JAX_IMPLS):
                before = cpu_ticks()
                tokens, seconds = runner.run(per_round)
            if r >= warmup:
                speeds[impl].append(tokens / seconds)
                steal[impl].append(steal_percent(before, cpu_ticks()))
        if r >= warmup:
            load.append(os.getloadavg()[0])
            log(f"[{name}] round {r - warmup + 1}/{rounds}: " +
                ", ".join(f"{impl} {speeds[impl][-1]:,.0f}" for impl in impls))
    first = next(iter(runners.values()))
    flops = flops_per_token(first.exp.config, len(first.exp.corpus.vocab))
    results = []
    for impl in impls:
        s = np.array(speeds[impl])
        median = float(np.median(s))
        results.append({
            "impl": impl, "config": name, **CONFIGS[name],
            "tokens_per_sec_median": median, "tokens_per_sec_min": float(s.min()),
            "tokens_per_sec_max": float(s.max()), "tokens_per_sec_rounds": [float(x) for x in s],
            "steal_percent_median": float(np.median(steal[impl])),
            "first_step_s": runners[impl].first_step_s, "compile_s": runners[impl].compile_s,
            "batches_per_round": per_round, "load_average": float(np.median(load)),
            "flops_per_token": flops, "matmul_peak_gflops": peak,
            "fraction_of_peak": median * flops / (peak * 1e9),
        })
    if "torch" in speeds:
        ref = np.median(speeds["torch"])
        for res in results:
            res["vs_torch"] = res["tokens_per_sec_median"] / ref
    return results


def format_table(results: list[dict]) -> str:
    head = ("config", "impl", "tokens/s median", "min", "max", "vs torch", "of peak", "steal", "first step s")
    rows = [head]
    for r in results:
        vs = f"{r['vs_torch']:.2f}" if "vs_torch" in r else "-"
        rows.append((r["config"], r["impl"], f"{r['tokens_per_sec_median']:,.0f}", f"{r['tokens_per_sec_min']:,.0f}",
                     f"{r['tokens_per_sec_max']:,.0f}", vs, f"{100 * r['fraction_of_peak']:.0f}%",
                     f"{r['steal_percent_median']:.0f}%", f"{r['first_step_s']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def plot_hidden_sizes(results: list[dict], info: dict, peak: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for impl in dict.fromkeys(r["impl"] for r in results):
        rows = sorted((r["num_hiddens"], r["tokens_per_sec_median"]) for r in results if r["impl"] == impl)
        ax.plot(*zip(*rows), marker="o", label="nn.LSTM" if impl == "torch" else f"lstm_jax {impl}")
    first = results[0]
    ax.set(xscale="log", yscale="log", xlabel="hidden units per layer", ylabel="training tokens/s (median)",
           title=f"{first['num_layers']} layers, batch {first['batch_size']} x {first['num_steps']} steps")
    hs = sorted({r["num_hiddens"] for r in results})
    ax.set_xticks(hs, [str(h) for h in hs])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, f"{info['cpu']}, {info['cpus']} cores; 2048^2 float32 product {peak:.0f} GFLOP/s",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="d2l,big", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--impls", default=None, help=f"comma-separated, of {JAX_IMPLS + TORCH_IMPLS}; default: "
                        f"{','.join(DEFAULT_IMPLS)} (torch if importable)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per implementation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="about how long a round is")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument("--hiddens", default=None, help="comma-separated hidden sizes: each config at each of them")
    parser.add_argument("--plot", default=None, help="with --hiddens: a PNG of tokens/s against hidden size")
    parser.add_argument("--keep-cores-awake", action="store_true",
                        help="idle-priority spinners during the JAX implementations' rounds, as the training "
                        "CLI's config.keep_cores_awake=True (never for torch)")
    parser.add_argument("--small-pages", action="store_true",
                        help="do not restart with malloc's huge pages (lstm_jax.allocator, as the training "
                        "CLI does); for an A/B, in separate runs")
    args = parser.parse_args(argv)
    huge = allocator.TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
    configs = args.configs.split(",")
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    if args.plot and not args.hiddens:
        parser.error("--plot needs --hiddens")
    if args.hiddens:
        try:
            hiddens = [int(h) for h in args.hiddens.split(",")]
        except ValueError:
            parser.error(f"--hiddens takes integers, not {args.hiddens!r}")
        for name in configs:
            for h in hiddens:
                CONFIGS[f"{name}_h{h}"] = {**CONFIGS[name], "num_hiddens": h}
        configs = [f"{name}_h{h}" for name in configs for h in hiddens]
    has_torch = torch_available()
    impls = [i for i in DEFAULT_IMPLS if has_torch or i not in TORCH_IMPLS] if args.impls is None \
        else args.impls.split(",")
    for impl in impls:
        if impl not in JAX_IMPLS + TORCH_IMPLS:
            parser.error(f"unknown impl {impl!r}; choose from {JAX_IMPLS + TORCH_IMPLS}")
        if impl in TORCH_IMPLS and not has_torch:
            parser.error(f"{impl} needs PyTorch: pip install -e '.[dev]'")
    log = functools.partial(print, file=sys.stderr, flush=True)
    info = machine_info()
    awake = args.keep_cores_awake and info["platform"] == "cpu"
    products = matmul_gflops()
    peak = max(products.values())
    log(f"{info['cpu']} ({info.get('cpu_flags', '')}), {info['cpus']} CPUs; jax {info['jax']}, flax {info['flax']}"
        + (f", torch {info['torch']} ({info['torch_threads']} threads)" if "torch" in info else "")
        + "; 2048^2 float32 product: " + ", ".join(f"{k} {v:.0f}" for k, v in products.items())
        + f" GFLOP/s; malloc huge pages: {huge}; spinners: {awake}")
    results = []
    for name in configs:
        results += bench_config(name, impls, args.rounds, args.warmup, args.round_seconds, peak, awake, log)
    print(format_table(results))
    if args.plot:
        plot_hidden_sizes(results, info, peak, args.plot)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            machine = {**info, "matmul_peak_gflops": peak, "matmul_gflops": products, "malloc_huge_pages": huge,
                       "keep_cores_awake": awake}
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    if "--small-pages" not in sys.argv[1:]:
        allocator.restart_with_huge_pages()
    main()
