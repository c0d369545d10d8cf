"""Training speed, side by side: the JAX LSTMs against PyTorch's ``nn.LSTM``.

  python scripts/bench.py                          # d2l's config and batch 256 / hidden 512
  python scripts/bench.py --rounds 3 --configs d2l # about a minute
  python scripts/bench.py --json bench.json        # also write the numbers as JSON

For every config, each implementation trains on the same minibatches (The Time
Machine, d2l's sequential partitioning, state carried across minibatches),
with the same loss (mean cross-entropy), gradient clipping (global norm 1) and
SGD. The JAX models run exactly as ``python -m lstm_jax.train`` runs them
(``train.compile_steps`` + ``train.train_epoch``), so the tokens/sec here is
what training prints. A round is a whole number of epochs (about
``--round-seconds``); the implementations take turns round by round, so drift
in the machine's load hits all of them alike. Warm-up rounds are not counted.

Implementations (``--impls``; the torch ones only when torch is importable,
``pip install -e '.[torch]'``):

  scratch            the scratch model as trained by default (the fast path)
  scratch_reference  the scratch model by autodiff of lstm.lstm_step (lstm_impl="reference")
  concise            the concise model (flax OptimizedLSTMCell's parameters) as trained by
                     default: through the fast path
  concise_reference  flax's OptimizedLSTMCell itself under nn.RNN (lstm_impl="reference")
  scratch_dp2        the scratch model, batch split over 2 host devices (XLA_FLAGS=
                     --xla_force_host_platform_device_count=2, shard_map data parallelism),
                     in a subprocess driven round by round
  torch              torch.nn.LSTM on one-hot inputs + nn.Linear head, as d2l's concise model
  torch_scratch      d2l's from-scratch LSTM in PyTorch (a Python loop over time steps)

``first_step_s``: for JAX, from the start of compilation to the first epoch's
losses on the host (compile + one epoch of the config); ``compile_s`` is the
ahead-of-time compile alone, as the training CLI reports it. For torch, the
first minibatch (no compilation). ``other_load_cores`` is how many of the CPU
cores other processes kept busy while the rounds ran (from /proc/stat, minus
this benchmark's own CPU time).
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
import time

import numpy as np

CONFIGS = {
    # d2l's chapter: 10,000 characters of The Time Machine = 8 minibatches per epoch.
    "d2l": dict(batch_size=32, num_steps=35, num_hiddens=256, max_tokens=10000),
    # The large config: 4 minibatches of 256 x 35 per epoch.
    "big": dict(batch_size=256, num_steps=35, num_hiddens=512, max_tokens=40000),
    # Tiny: for the smoke test.
    "tiny": dict(batch_size=4, num_steps=5, num_hiddens=16, max_tokens=300),
}
JAX_IMPLS = ("scratch", "scratch_reference", "concise", "concise_reference", "scratch_dp2")
TORCH_IMPLS = ("torch", "torch_scratch")
DEFAULT_IMPLS = ("scratch", "scratch_reference", "concise", "concise_reference", "torch", "torch_scratch")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_config(name: str, impl: str):
    from lstm_jax import configs

    c = configs.get_base_config()
    spec = CONFIGS[name]
    c.batch_size, c.num_steps, c.num_hiddens = spec["batch_size"], spec["num_steps"], spec["num_hiddens"]
    c.data.max_tokens = spec["max_tokens"]
    c.model = "concise" if impl.startswith("concise") else "scratch"
    c.lstm_impl = "reference" if impl.endswith("_reference") else "fast"
    return c


class Runner:
    """One implementation on one config: ``run(epochs) -> (tokens, seconds)``."""

    first_step_s: float
    compile_s: float | None = None

    def close(self):
        pass


class JaxRunner(Runner):
    def __init__(self, config_name: str, impl: str):
        import jax

        from lstm_jax import train

        self.train = train
        self.exp = train.Experiment.from_config(make_config(config_name, impl))
        ts = self.exp.init_train_state()
        jax.block_until_ready(ts)
        start = time.perf_counter()
        if impl == "scratch_dp2":
            self.compiled, self.compile_s = compile_steps_data_parallel(self.exp, ts)
        else:
            self.compiled, self.compile_s = train.compile_steps(self.exp, ts)
        self.ts, self.epoch = ts, 0
        self.run(1)
        self.first_step_s = time.perf_counter() - start

    def run(self, epochs: int):
        start = time.perf_counter()
        for _ in range(epochs):
            self.ts, metrics = self.train.train_epoch(self.exp, self.compiled, self.ts, self.epoch)
            self.epoch += 1
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(metrics["loss"])):
            raise RuntimeError("the loss is not finite")
        c = self.exp.config
        return epochs * self.exp.batches_per_epoch * c.batch_size * c.num_steps, seconds


def compile_steps_data_parallel(exp, ts):
    """``train.compile_steps``, with the batch split over all local devices (shard_map).

    Each device runs the forward and backward pass on its rows. Autodiff
    through shard_map sums the replicated parameters' gradients over devices
    (the transpose of using a replicated value on varying data), and each
    device's loss is the mean over its rows, so dividing by the device count
    gives the full-batch gradient; then clipping and the SGD update, which
    every device applies to its copy of the parameters.
    """
    import jax
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from lstm_jax import train

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    num_devices = len(jax.devices())
    optimizer = optax.GradientTransformation(  # same state as exp.optimizer: the same TrainState
        exp.optimizer.init,
        lambda grads, state, params=None: exp.optimizer.update(
            jax.tree.map(lambda g: g / num_devices, grads), state, params))
    c = exp.config

    def block(ts, state, X, Y):
        ts, state, metrics = train.train_block(exp.model, optimizer, c.data.random_iter, ts, state, X, Y)
        # The loss: mean of the devices' means; the norm: of the summed gradients, so / num_devices.
        return ts, state, {"loss": jax.lax.pmean(metrics["loss"], "data"),
                           "grad_norm": metrics["grad_norm"] / num_devices}

    sharded = jax.shard_map(block, mesh=mesh, in_specs=(P(), P("data"), P(None, "data"), P(None, "data")),
                            out_specs=(P(), P("data"), P()))
    batch = NamedSharding(mesh, P(None, "data"))
    fn = jax.jit(sharded, donate_argnums=(0, 1),
                 in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data")), batch, batch))
    state = exp.model.initial_state(c.batch_size)
    compiled, start = {}, time.perf_counter()
    for n in sorted(set(exp.block_sizes())):
        XY = jax.ShapeDtypeStruct((n, c.batch_size, c.num_steps), np.int32)
        compiled[n] = fn.lower(ts, state, XY, XY).compile()
    return compiled, time.perf_counter() - start


class WorkerRunner(Runner):
    """A JaxRunner in a subprocess (for other XLA_FLAGS), driven round by round over a pipe."""

    def __init__(self, config_name: str, impl: str, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", impl, "--configs", config_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, **env))
        ready = self._read()
        self.first_step_s, self.compile_s = ready["first_step_s"], ready["compile_s"]

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark worker exited ({self.proc.wait()})")
        return json.loads(line)

    def run(self, epochs: int):
        self.proc.stdin.write(f"{epochs}\n")
        self.proc.stdin.flush()
        out = self._read()
        return out["tokens"], out["seconds"]

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def worker_main(impl: str, config_name: str):
    runner = JaxRunner(config_name, impl)
    print(json.dumps({"first_step_s": runner.first_step_s, "compile_s": runner.compile_s}), flush=True)
    for line in sys.stdin:
        tokens, seconds = runner.run(int(line))
        print(json.dumps({"tokens": tokens, "seconds": seconds}), flush=True)


class TorchRunner(Runner):
    """The same minibatches, loss, clipping and SGD in PyTorch (CPU, float32)."""

    def __init__(self, config_name: str, impl: str):
        import torch

        from lstm_jax import train

        self.torch = torch
        torch.manual_seed(0)
        start = time.perf_counter()
        self.exp = train.Experiment.from_config(make_config(config_name, "scratch"))
        c = self.exp.config
        V, H = len(self.exp.corpus.vocab), c.num_hiddens
        if impl == "torch":
            self.lstm, self.head = torch.nn.LSTM(V, H), torch.nn.Linear(H, V)
            self.params = list(self.lstm.parameters()) + list(self.head.parameters())
            self.forward = self._forward_nn
        else:  # d2l's get_lstm_params / lstm / RNNModelScratch, in PyTorch
            def normal(*shape):
                return (torch.randn(*shape) * 0.01).requires_grad_()

            def three():
                return normal(V, H), normal(H, H), torch.zeros(H, requires_grad=True)

            self.params = [*three(), *three(), *three(), *three(), normal(H, V),
                           torch.zeros(V, requires_grad=True)]
            self.forward = self._forward_scratch
        self.V = V
        self.optimizer = torch.optim.SGD(self.params, lr=c.learning_rate)
        self.epoch = 0
        self.run(1, first_step_only=True)
        self.first_step_s = time.perf_counter() - start
        self.run(1)  # finish a warm-up epoch

    def _forward_nn(self, x_TxBxV, state):
        out, state = self.lstm(x_TxBxV, state)
        return self.head(out), state

    def _forward_scratch(self, x_TxBxV, state):
        torch = self.torch
        [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q] = self.params
        if state is None:
            zeros = torch.zeros(x_TxBxV.shape[1], W_hi.shape[0])
            state = (zeros, zeros)
        H, C = state
        outputs = []
        for X in x_TxBxV:
            I = torch.sigmoid((X @ W_xi) + (H @ W_hi) + b_i)
            F = torch.sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
            O = torch.sigmoid((X @ W_xo) + (H @ W_ho) + b_o)
            C_tilda = torch.tanh((X @ W_xc) + (H @ W_hc) + b_c)
            C = F * C + I * C_tilda
            H = O * torch.tanh(C)
            outputs.append(H @ W_hq + b_q)
        return torch.stack(outputs), (H, C)

    def run(self, epochs: int, first_step_only: bool = False):
        torch, F = self.torch, self.torch.nn.functional
        c = self.exp.config
        start, tokens = time.perf_counter(), 0
        for _ in range(epochs):
            batches = self.exp.epoch_batches(self.epoch)
            self.epoch += 1
            state = None  # d2l: a fresh state every epoch, carried (detached) across minibatches
            for X, Y in zip(batches.X, batches.Y):
                X_TxB = torch.from_numpy(X.T.astype(np.int64))
                Y_TxB = torch.from_numpy(Y.T.astype(np.int64))
                if state is not None:
                    state = tuple(s.detach() for s in state)
                logits, state = self.forward(F.one_hot(X_TxB, self.V).float(), state)
                loss = F.cross_entropy(logits.reshape(-1, self.V), Y_TxB.reshape(-1))
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                self.optimizer.step()
                tokens += X.size
                if first_step_only:
                    return tokens, time.perf_counter() - start
            if not np.isfinite(loss.item()):
                raise RuntimeError("the loss is not finite")
        return tokens, time.perf_counter() - start


def make_runner(config_name: str, impl: str) -> Runner:
    if impl in TORCH_IMPLS:
        return TorchRunner(config_name, impl)
    if impl == "scratch_dp2":
        return WorkerRunner(config_name, impl, {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                                              " --xla_force_host_platform_device_count=2")})
    return JaxRunner(config_name, impl)


class CpuMeter:
    """Busy CPU time of the whole machine and of this benchmark (Linux /proc; else zeros)."""

    def __init__(self, runners):
        self.runners = runners
        self.start = self._read()

    def _read(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        total, idle = sum(v) / hz, (v[3] + v[4]) / hz
        t = os.times()
        mine = t.user + t.system + sum(r.cpu_seconds() for r in self.runners if hasattr(r, "cpu_seconds"))
        return total, idle, mine, time.monotonic()

    def other_load_cores(self) -> float | None:
        end = self._read()
        if self.start is None or end is None:
            return None
        total, idle, mine, wall = (b - a for a, b in zip(self.start, end))
        busy = (total - idle) - mine
        return max(0.0, busy / wall) if wall > 0 else None


def machine_info() -> dict:
    import jax

    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "jax": jax.__version__, "cpus": os.cpu_count(), "platform": jax.devices()[0].platform}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    import flax
    import optax

    info["flax"], info["optax"] = flax.__version__, optax.__version__
    if torch_available():
        import torch

        info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
    return info


def bench_config(config_name: str, impls: list[str], rounds: int, warmup: int, round_seconds: float,
                 log) -> list[dict]:
    runners = {}
    for impl in impls:
        log(f"[{config_name}] setting up {impl} ...")
        runners[impl] = make_runner(config_name, impl)
    # Epochs per round: about round_seconds, from one timed epoch of each (the slowest decides).
    epoch_s = max(r.run(1)[1] for r in runners.values())
    epochs = max(1, round(round_seconds / epoch_s))
    speeds = {impl: [] for impl in impls}
    meter = CpuMeter(list(runners.values()))
    for r in range(warmup + rounds):
        for impl, runner in runners.items():
            tokens, seconds = runner.run(epochs)
            if r >= warmup:
                speeds[impl].append(tokens / seconds)
        if r >= warmup:
            log(f"[{config_name}] round {r - warmup + 1}/{rounds}: " +
                ", ".join(f"{impl} {speeds[impl][-1]:,.0f}" for impl in impls))
    other_load = meter.other_load_cores()
    for runner in runners.values():
        runner.close()
    spec = CONFIGS[config_name]
    results = []
    for impl in impls:
        s = np.array(speeds[impl])
        results.append({
            "impl": impl, "config": config_name, **spec,
            "tokens_per_sec_median": float(np.median(s)), "tokens_per_sec_min": float(s.min()),
            "tokens_per_sec_max": float(s.max()), "tokens_per_sec_rounds": [float(x) for x in s],
            "first_step_s": runners[impl].first_step_s, "compile_s": runners[impl].compile_s,
            "epochs_per_round": epochs, "other_load_cores": other_load,
        })
    if "torch" in speeds:
        ref = np.median(speeds["torch"])
        for res in results:
            res["vs_torch"] = res["tokens_per_sec_median"] / ref
    return results


def format_table(results: list[dict]) -> str:
    head = ("config", "impl", "tokens/s median", "min", "max", "vs torch", "first step s", "compile s")
    rows = [head]
    for r in results:
        vs = f"{r['vs_torch']:.2f}" if "vs_torch" in r else "-"
        comp = f"{r['compile_s']:.2f}" if r["compile_s"] is not None else "-"
        rows.append((r["config"], r["impl"], f"{r['tokens_per_sec_median']:,.0f}",
                     f"{r['tokens_per_sec_min']:,.0f}", f"{r['tokens_per_sec_max']:,.0f}", vs,
                     f"{r['first_step_s']:.2f}", comp))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="d2l,big", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--impls", default=None,
                        help=f"comma-separated, of {JAX_IMPLS + TORCH_IMPLS}; default: "
                             f"{','.join(DEFAULT_IMPLS)} (torch ones if importable)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per implementation")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed rounds first (the JAX runs measured ~30%% slower in their first seconds)")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="about how long a round is")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    if args.worker:
        return worker_main(args.worker, configs[0])
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    has_torch = torch_available()
    if args.impls is None:
        impls = [i for i in DEFAULT_IMPLS if has_torch or i not in TORCH_IMPLS]
    else:
        impls = args.impls.split(",")
        for impl in impls:
            if impl not in JAX_IMPLS + TORCH_IMPLS:
                parser.error(f"unknown impl {impl!r}; choose from {JAX_IMPLS + TORCH_IMPLS}")
            if impl in TORCH_IMPLS and not has_torch:
                parser.error(f"{impl} needs PyTorch: pip install -e '.[torch]'")
    # torch first among the columns: the reference.
    impls = sorted(impls, key=lambda i: (i not in TORCH_IMPLS, (JAX_IMPLS + TORCH_IMPLS).index(i)))

    log = functools.partial(print, file=sys.stderr, flush=True)
    info = machine_info()
    log(f"{info['cpu']}, {info['cpus']} CPUs; jax {info['jax']}, flax {info['flax']}"
        + (f", torch {info['torch']} ({info['torch_threads']} threads)" if "torch" in info else ""))
    results = []
    for name in configs:
        results += bench_config(name, impls, args.rounds, args.warmup, args.round_seconds, log)
    print(format_table(results))
    loads = {r["config"]: r["other_load_cores"] for r in results}
    print("other processes kept busy (cores, during the rounds): " +
          ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} ?" for k, v in loads.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
