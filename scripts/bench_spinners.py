"""A/B of config.keep_cores_awake: training speed with and without the idle-priority spinners.

  python scripts/bench_spinners.py                                   # shakespeare_small, d2l
  python scripts/bench_spinners.py --configs shakespeare,word --impls scratch,torch --rounds 9

One process: each implementation (bench.py's runners, the same minibatches) trains a round of
about ``--round-seconds`` with the spinners on, then one with them off, in alternating order,
after two warm-up rounds of each. Printed per config and implementation: the median tokens/s of
both, the median of the per-round ratios (on / off, neighbouring rounds), and the hypervisor's
steal in each (/proc/stat), which says how busy the host was while it ran.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import bench  # scripts/bench.py
from lstm_jax import allocator, spinners


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="shakespeare_small,d2l", help=f"of {sorted(bench.CONFIGS)}")
    parser.add_argument("--impls", default="scratch", help="comma-separated, of "
                        f"{bench.JAX_IMPLS + bench.TORCH_IMPLS}")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds of each setting")
    parser.add_argument("--round-seconds", type=float, default=1.5)
    args = parser.parse_args(argv)
    for name in args.configs.split(","):
        if name not in bench.CONFIGS:
            parser.error(f"unknown config {name!r}")
    impls = args.impls.split(",")
    for impl in impls:
        if impl not in bench.JAX_IMPLS + bench.TORCH_IMPLS:
            parser.error(f"unknown impl {impl!r}")
    print(f"{bench.machine_info()['cpu']}, {os.cpu_count()} CPUs")
    print("| config | impl | off tokens/s | on tokens/s | on / off (median of rounds) | steal off | steal on |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.configs.split(","):
        for impl in impls:
            runner = (bench.TorchRunner if impl in bench.TORCH_IMPLS else bench.JaxRunner)(name, impl)
            per_round = max(1, round(args.round_seconds / runner.run(1)[1]))
            speed, steal = {True: [], False: []}, {True: [], False: []}
            for r in range(2 + args.rounds):
                for on in ((True, False) if r % 2 else (False, True)):
                    with spinners.keep_cores_awake(on):
                        before = bench.cpu_ticks()
                        tokens, seconds = runner.run(per_round)
                        after = bench.cpu_ticks()
                    if r >= 2:
                        speed[on].append(tokens / seconds)
                        steal[on].append(bench.steal_percent(before, after))
            ratio = np.median(np.array(speed[True]) / np.array(speed[False]))
            print(f"| {name} | {impl} | {np.median(speed[False]):,.0f} | {np.median(speed[True]):,.0f} | "
                  f"{ratio:.3f} | {np.median(steal[False]):.1f}% | {np.median(steal[True]):.1f}% |", flush=True)


if __name__ == "__main__":
    allocator.restart_with_huge_pages()
    sys.exit(main())
