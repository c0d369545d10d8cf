"""Training speed, side by side: the JAX LSTMs against PyTorch's ``nn.LSTM``, in one process.

  python scripts/bench.py                                  # d2l and big
  python scripts/bench.py --configs shakespeare,shakespeare_small,word --rounds 5
  python scripts/bench.py --configs d2l --rounds 3 --json bench.json
  python scripts/bench.py --configs shakespeare_small --impls torch,scratch --hiddens 128,256,512,768,1024 \
      --plot docs/img/hidden_size.png                      # tokens/s against hidden size
  python scripts/bench.py --configs shakespeare_small --huge-pages ab   # what malloc's huge pages give

For every config each implementation trains on the same minibatches (d2l's
sequential partitioning, state carried across minibatches) with the same loss
(mean cross-entropy), clipping (global norm 1) and SGD. The JAX models run the
training CLI's compiled train step (``Experiment.train_block``). A round is about
``--round-seconds`` of minibatches; the implementations take turns round by
round, so drift in the machine's load hits all of them alike; warm-up rounds
are not counted.

Implementations (``--impls``; the torch ones only when torch is importable, ``pip install -e '.[dev]'``):

  scratch            the scratch model as trained by default (the fast path)
  scratch_reference  the scratch model by autodiff of lstm.lstm_step (lstm_impl="reference")
  concise            flax's OptimizedLSTMCell under nn.RNN (the concise model's default)
  concise_fast       flax's parameters through the fast path (lstm_impl="fast")
  torch              scripts/torch_lm.py's TorchLM: torch.nn.LSTM(num_layers=L) + nn.Linear head, on
                     one-hot inputs or, where the config has an embedding (word), nn.Embedding

``flops_per_token``: matrix products only, forward and backward (3x the
forward's: the input and weight gradients), the one-hot input counted as the
row lookup it is (0 FLOPs); ``matmul_peak_gflops``: the faster of a 2048 x 2048 (``--matmul-size``)
float32 product through XLA and through PyTorch (``matmul_gflops`` has both),
measured in the same run, so ``fraction_of_peak`` compares with the machine.
``steal_percent_median``: of the CPU time in an implementation's rounds, the
share the hypervisor of a virtual machine kept its CPUs waiting (/proc/stat).
``first_step_s``: for JAX, compiling plus the first minibatch on the host; for
torch, the first minibatch.

``--huge-pages``: glibc's ``glibc.malloc.hugetlb=1`` tunable has malloc ask for
transparent huge pages, so big buffers (XLA:CPU's per-call temporaries) are not
page-faulted in 4 KB at a time. glibc reads it only when a process starts, so
``on`` runs the benchmark in a child process with it in ``GLIBC_TUNABLES``, and
``ab`` runs ``--ab-runs`` child processes with it and as many without, taking
turns (off, on, on, off, ...), and reports per config and implementation the
median tokens/s of all their rounds with and without and the ratio. It does
something only with glibc >= 2.35 and transparent huge pages not ``never``
(both in the JSON's ``machine``). ``off`` (the default) runs in this process
with the environment as it is.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

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
    # the same on the Penn Treebank: a 10,000-word head, most of a word model's work
    "ptb": dict(batch_size=20, num_steps=20, num_hiddens=200, num_layers=2, max_tokens=0, token="word",
                embed_dim=200, corpus="ptb", normalize="eos"),
    # the same at 4x and 16x longer sequences: where cells that run parallel in time (min_gru, min_lstm) gain
    "shakespeare_small_256": dict(batch_size=64, num_steps=256, num_hiddens=256, num_layers=2, max_tokens=0,
                                  corpus="tinyshakespeare", normalize="none"),
    "shakespeare_small_1024": dict(batch_size=64, num_steps=1024, num_hiddens=256, num_layers=2, max_tokens=0,
                                   corpus="tinyshakespeare", normalize="none"),
    "shakespeare_1layer": dict(batch_size=64, num_steps=100, num_hiddens=512, num_layers=1, max_tokens=0,
                              corpus="tinyshakespeare", normalize="none"),
    "big_2layer": dict(batch_size=256, num_steps=35, num_hiddens=512, num_layers=2, max_tokens=40000),
    "tiny": dict(batch_size=4, num_steps=5, num_hiddens=16, num_layers=1, max_tokens=300),  # the smoke test
}
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
JAX_IMPLS = ("scratch", "scratch_reference", "concise", "concise_fast")
TORCH_IMPLS = ("torch", "torch_gru", "torch_rnn")
# --cells: "cell:<name>" runs the scratch model with that cell as training runs it by default;
# PyTorch's nn.LSTM, nn.GRU and nn.RNN beside their counterparts.
TORCH_FOR = {"torch": "lstm", "torch_gru": "gru_reset_after", "torch_rnn": "rnn"}
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
    if impl.startswith("cell:"):
        c.cell, c.lstm_impl = impl[5:], None
        c.num_heads = 4 if c.cell == "slstm" else 1  # xLSTM's default; the same work at any number of heads
        return c
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

        from lstm_jax.experiment import Experiment

        self.exp = exp = Experiment.from_config(make_config(config_name, impl))
        ts = exp.init_train_state()
        jax.block_until_ready(ts)
        start = time.perf_counter()
        self.ts, self.state, self.compile_s = exp.compile(ts, exp.initial_state())
        self.epoch, self.done, self.batches = 0, 0, exp.epoch_batches(0)
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
            self.ts, self.state, m = self.exp.train_block(self.ts, self.state, X, Y, n)
            loss = np.asarray(m["loss"])[:n]
            left, self.done = left - n, self.done + n
            if self.done == self.exp.batches_per_epoch:
                self.epoch, self.done = self.epoch + 1, 0
                self.batches = self.exp.epoch_batches(self.epoch)
                self.state = self.exp.initial_state()
        if not np.all(np.isfinite(loss)):
            raise RuntimeError("the loss is not finite")
        return num_batches * c.batch_size * c.num_steps, time.perf_counter() - start


class TorchRunner:
    """The same minibatches, loss, clipping and SGD with ``torch_lm.TorchLM`` (CPU, float32)."""

    compile_s = None

    def __init__(self, config_name: str, impl: str):
        import torch

        from lstm_jax.experiment import Experiment
        from torch_lm import TorchLM  # scripts/torch_lm.py

        self.torch = torch
        torch.manual_seed(0)
        start = time.perf_counter()
        self.exp = exp = Experiment.from_config(make_config(config_name, "scratch"))
        c = exp.config
        self.V = V = len(exp.corpus.vocab)
        self.model = TorchLM(V, c.num_hiddens, c.num_layers, c.embed_dim, c.dropout, TORCH_FOR[impl])
        self.params = list(self.model.parameters())
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
            state = self.state
            if state is not None:  # an LSTM's (h, c), or a GRU's or RNN's h
                state = state.detach() if isinstance(state, torch.Tensor) else tuple(s.detach() for s in state)
            logits, self.state = self.model(X, state)
            loss = F.cross_entropy(logits.reshape(-1, self.V), Y.reshape(-1))
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
    # What --huge-pages depends on: the tunable in this process, glibc's version, the kernel's THP mode.
    info["malloc_huge_pages"] = HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
    try:
        info["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            info["transparent_hugepage"] = f.read().strip()
    except (AttributeError, ValueError, OSError):
        pass
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
                 log) -> list[dict]:
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
    if "cell:lstm" in speeds:  # --cells: each cell's time per token over the LSTM's
        ref = np.median(speeds["cell:lstm"])
        for res in results:
            res["time_vs_lstm"] = ref / res["tokens_per_sec_median"]
            if res["impl"].startswith("cell:"):
                model = runners[res["impl"]].exp.model
                res.update(cell=model.cell, runs=model.runs, num_params=model.num_params())
    return results


def format_table(results: list[dict]) -> str:
    head = ("config", "impl", "tokens/s median", "min", "max", "vs torch", "of peak", "steal", "first step s")
    cells = any("time_vs_lstm" in r for r in results)
    head += ("runs", "parameters", "time/token vs lstm") if cells else ()
    rows = [head]
    for r in results:
        vs = f"{r['vs_torch']:.2f}" if "vs_torch" in r else "-"
        rows.append((r["config"], r["impl"], f"{r['tokens_per_sec_median']:,.0f}", f"{r['tokens_per_sec_min']:,.0f}",
                     f"{r['tokens_per_sec_max']:,.0f}", vs, f"{100 * r['fraction_of_peak']:.0f}%",
                     f"{r['steal_percent_median']:.0f}%", f"{r['first_step_s']:.2f}")
                    + ((r.get("runs", "-"), f"{r['num_params']:,}" if "num_params" in r else "-",
                        f"{r['time_vs_lstm']:.2f}") if cells else ()))
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
    fig.text(0.01, 0.01, f"{info['cpu']}, {info['cpus']} cores; float32 product peak {peak:.0f} GFLOP/s",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def environment(huge: bool) -> dict[str, str]:
    """This process's environment with glibc's huge-page tunable set (``huge``) or taken out."""
    name = HUGE_PAGES_TUNABLE.split("=")[0]
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and t.split("=")[0] != name]
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables or huge:
        env["GLIBC_TUNABLES"] = ":".join(tunables + ([HUGE_PAGES_TUNABLE] if huge else []))
    return env


def run_child(args, huge: bool, json_path: str | None, plot: str | None = None, quiet: bool = False) -> dict:
    """This benchmark with ``args`` in a fresh process, huge pages on or off; its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        json_path = json_path or os.path.join(tmp, "bench.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--configs", args.configs, "--rounds", str(args.rounds),
               "--warmup", str(args.warmup), "--round-seconds", str(args.round_seconds), "--json", json_path,
               "--matmul-size", str(args.matmul_size),
               *(["--impls", args.impls] if args.impls else []), *(["--hiddens", args.hiddens] if args.hiddens else []),
               *(["--cells", args.cells] if args.cells else []),
               *(["--plot", plot] if plot else [])]
        done = subprocess.run(cmd, env=environment(huge), stdout=subprocess.DEVNULL if quiet else None)
        if done.returncode:
            sys.exit(f"the benchmark with huge pages {'on' if huge else 'off'} failed (exit {done.returncode})")
        with open(json_path, encoding="utf-8") as f:
            return json.load(f)


def huge_pages_ab(args, log) -> list[dict]:
    """``args.ab_runs`` child processes with huge pages and as many without, in turns (off, on, on, off, ...);
    per config and implementation, the median tokens/s of all their rounds with and without."""
    speeds, runs = {}, []
    for k in range(args.ab_runs):
        for huge in (False, True) if k % 2 == 0 else (True, False):
            log(f"=== huge pages {'on' if huge else 'off'}, run {k + 1}/{args.ab_runs}")
            report = run_child(args, huge, None, quiet=True)
            runs.append({"huge_pages": huge, **report})
            for r in report["results"]:
                speeds.setdefault((r["config"], r["impl"]), {False: [], True: []})[huge] += r["tokens_per_sec_rounds"]
    results = []
    for (config, impl), s in speeds.items():
        off, on = float(np.median(s[False])), float(np.median(s[True]))
        results.append({"config": config, "impl": impl, "tokens_per_sec_median_off": off,
                        "tokens_per_sec_median_on": on, "on_over_off": on / off,
                        "tokens_per_sec_rounds_off": s[False], "tokens_per_sec_rounds_on": s[True]})
    print("| config | impl | tokens/s, small pages | tokens/s, huge pages | huge / small |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['config']} | {r['impl']} | {r['tokens_per_sec_median_off']:,.0f} | "
              f"{r['tokens_per_sec_median_on']:,.0f} | {r['on_over_off']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            machine = {**runs[0]["machine"], "malloc_huge_pages": "ab"}
            json.dump({"machine": machine, "args": vars(args), "results": results, "runs": runs}, f, indent=2)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="d2l,big", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--impls", default=None, help=f"comma-separated, of {JAX_IMPLS + TORCH_IMPLS}; default: "
                        f"{','.join(DEFAULT_IMPLS)} (torch if importable)")
    parser.add_argument("--cells", default=None, help="'all' or comma-separated cells: each cell's scratch model "
                        "(as training runs it) with nn.LSTM, nn.GRU and nn.RNN beside them; replaces --impls")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per implementation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="about how long a round is")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the n x n float32 product that measures the machine's peak (the tests use a small one)")
    parser.add_argument("--hiddens", default=None, help="comma-separated hidden sizes: each config at each of them")
    parser.add_argument("--plot", default=None, help="with --hiddens: a PNG of tokens/s against hidden size")
    parser.add_argument("--huge-pages", choices=("off", "on", "ab"), default="off",
                        help=f"malloc's huge pages ({HUGE_PAGES_TUNABLE}): off: this process as it is; on: a child "
                        "process with them; ab: child processes with and without them, taking turns")
    parser.add_argument("--ab-runs", type=int, default=3, help="with --huge-pages ab: child processes of each")
    args = parser.parse_args(argv)
    if args.ab_runs < 1:
        parser.error("--ab-runs must be at least 1")
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
    if args.cells:
        from lstm_jax import cells

        names = cells.NAMES if args.cells == "all" else args.cells.split(",")
        for name in names:
            if name not in cells.NAMES:
                parser.error(f"unknown cell {name!r}; choose from {cells.NAMES}")
        impls = [i for i in TORCH_IMPLS if has_torch] + [f"cell:{n}" for n in names]
    for impl in impls:
        if impl.startswith("cell:") and args.cells:
            continue
        if impl not in JAX_IMPLS + TORCH_IMPLS:
            parser.error(f"unknown impl {impl!r}; choose from {JAX_IMPLS + TORCH_IMPLS}")
        if impl in TORCH_IMPLS and not has_torch:
            parser.error(f"{impl} needs PyTorch: pip install -e '.[dev]'")
    log = functools.partial(print, file=sys.stderr, flush=True)
    if args.huge_pages == "on":
        return run_child(args, huge=True, json_path=args.json, plot=args.plot)["results"]
    if args.huge_pages == "ab":
        return huge_pages_ab(args, log)
    info = machine_info()
    products = matmul_gflops(args.matmul_size)
    peak = max(products.values())
    log(f"{info['cpu']} ({info.get('cpu_flags', '')}), {info['cpus']} CPUs; jax {info['jax']}, flax {info['flax']}"
        + (f", torch {info['torch']} ({info['torch_threads']} threads)" if "torch" in info else "")
        + f"; {args.matmul_size}^2 float32 product: " + ", ".join(f"{k} {v:.0f}" for k, v in products.items())
        + f" GFLOP/s; malloc huge pages: {info['malloc_huge_pages']} "
        + f"({info.get('glibc', '?')}, transparent huge pages {info.get('transparent_hugepage', '?')})")
    results = []
    for name in configs:
        results += bench_config(name, impls, args.rounds, args.warmup, args.round_seconds, peak, log)
    print(format_table(results))
    if args.plot:
        plot_hidden_sizes(results, info, peak, args.plot)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            machine = {**info, "matmul_peak_gflops": peak, "matmul_gflops": products}
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
