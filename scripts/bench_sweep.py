"""Wall time of one sweep, vmapped vs one trial at a time, median of a few runs.

  python scripts/bench_sweep.py                       # 5 lr x 3 seeds, hidden 256, 50 epochs, concise
  python scripts/bench_sweep.py --repeats 3 --model scratch --modes vmap,solo

Each run is the real CLI (python -m lstm_jax.sweep) in a fresh process and a fresh
--out, so the wall time includes Python start-up, data, compile and plots.
The runs of the modes alternate (vmap, solo, vmap, ...) so that a change
in machine load hits them alike; the load average is printed with each run.
It also checks that every mode reached the same final perplexities.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = {"vmap": ["--mode", "vmap"], "solo": ["--mode", "solo"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="concise", choices=("concise", "scratch"))
    p.add_argument("--hidden", default="256")
    p.add_argument("--lr", default="0.25,0.5,1,2,4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="vmap,solo", help=f"comma-separated, of {','.join(MODES)}")
    p.add_argument("--json", help="also write the measurements here")
    args = p.parse_args()
    modes = args.modes.split(",")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    times: dict[str, list[float]] = {m: [] for m in modes}
    finals: dict[str, dict] = {}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in modes:
                out = os.path.join(tmp, f"{mode}-{r}")
                cmd = [sys.executable, "-m", "lstm_jax.sweep",
                       "--config", os.path.join(repo, "experiments", f"{args.model}.py"),
                       "--hidden", args.hidden, "--lr", args.lr, "--seeds", args.seeds,
                       f"--config.num_epochs={args.epochs}", "--config.log_every=1000000",
                       f"--out={out}", *MODES[mode]]
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
                wall = time.perf_counter() - start
                if res.returncode != 0:
                    sys.exit(f"{mode} failed:\n{res.stderr[-2000:]}")
                with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
                    rows = json.load(f)
                finals.setdefault(mode, {row["trial"]: row["final_ppl"] for row in rows})
                times[mode].append(wall)
                runs.append({"mode": mode, "repeat": r, "wall_s": wall, "load1_before": load_before,
                             "load1_after": os.getloadavg()[0]})
                print(f"run {r + 1}/{args.repeats} {mode:>14}: {wall:6.1f} s  "
                      f"(load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f})", flush=True)

    print(f"\n{args.model}, hidden {args.hidden}, lr {args.lr}, seeds {args.seeds}, {args.epochs} epochs; "
          f"{os.cpu_count()} CPUs")
    base = statistics.median(times[modes[0]])
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"{mode:>14}: median {med:6.1f} s (min {min(times[mode]):.1f}, max {max(times[mode]):.1f}); "
              f"{modes[0]} / this = {base / med:.2f}")
    ref = finals[modes[0]]
    for mode in modes[1:]:
        worst = max((abs(finals[mode][k] - v) / v for k, v in ref.items()
                     if v is not None and finals[mode][k] is not None), default=0.0)
        print(f"final perplexities, {mode} vs {modes[0]}: largest relative difference {worst:.1e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "runs": runs, "finals": finals}, f, indent=2)


if __name__ == "__main__":
    main()
