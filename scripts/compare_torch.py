"""lstm_jax against a plain PyTorch char-LSTM of the same size, for the same wall-clock budget.

  python scripts/compare_torch.py                                  # experiments/shakespeare.py, 180 s each
  python scripts/compare_torch.py --budget 60 --config experiments/shakespeare.py --order jax,torch
  python scripts/compare_torch.py --config.num_hiddens=512        # overrides apply to both

Both train the config's model (layers, hidden size, embedding, dropout on the
non-recurrent connections) on the same split with the same optimizer, learning
rate schedule, clipping and minibatches (d2l's sequential partitioning, the
state carried), for ``--budget`` seconds of training each (compile and
evaluation excluded), one after the other in this process, and both are scored
the same way: every token of the validation split, in ``batch_size`` streams
whose state carries through the split. The PyTorch model is ``scripts/torch_lm.py``'s.
torch is a test extra: ``pip install -e '.[dev]'``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import bench  # scripts/bench.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDERS = ("torch", "jax")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(REPO, "experiments", "shakespeare.py"),
    "Config file (experiments/*.py); override fields with --config.<field>=<value> (for both).")
_BUDGET = flags.DEFINE_float("budget", 180.0, "Training seconds for each.")
_ORDER = flags.DEFINE_list("order", list(ORDERS), "Which trains first.")


def train_torch(config, budget_s: float, log) -> dict:
    """scripts/torch_lm.py's model, trained like lstm_jax trains."""
    import torch

    from lstm_jax.experiment import Experiment
    from torch_lm import TorchLM  # scripts/torch_lm.py

    torch.manual_seed(config.seed)
    exp = Experiment.from_config(config)
    c, V = exp.config, len(exp.corpus.vocab)
    model = TorchLM(V, c.num_hiddens, c.num_layers, c.embed_dim, c.dropout)
    total = c.num_epochs * exp.batches_per_epoch
    opt = {"sgd": lambda: torch.optim.SGD(model.parameters(), lr=c.learning_rate),
           "adam": lambda: torch.optim.Adam(model.parameters(), lr=c.learning_rate),
           "adamw": lambda: torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
           }[c.optimizer]()

    def scale(step):  # lstm_jax's schedule: linear warm-up, then constant or cosine to 0
        s = min(1.0, step / c.warmup_steps) if c.warmup_steps else 1.0
        if c.lr_schedule == "cosine":
            s *= 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (step - c.warmup_steps) / max(total - c.warmup_steps, 1)))))
        return s

    sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
    F = torch.nn.functional
    elapsed, step, epoch, tokens = 0.0, 0, 0, 0
    while elapsed < budget_s and epoch < c.num_epochs:
        batches, state = exp.epoch_batches(epoch), None
        model.train()
        for i in range(len(batches)):
            start = time.perf_counter()
            b = batches.block(i, 1)
            X = torch.from_numpy(b.X[0].T.astype(np.int64))
            Y = torch.from_numpy(b.Y[0].T.astype(np.int64))
            state = None if state is None else tuple(s.detach() for s in state)
            logits, state = model(X, state)
            loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            opt.step()
            sched.step()
            elapsed += time.perf_counter() - start
            step, tokens = step + 1, tokens + X.numel()
            if elapsed >= budget_s:
                break
        else:
            epoch += 1
        log(f"torch: step {step}, {elapsed:.0f} s, train loss {loss.item():.3f}")
    model.eval()
    s = exp.heldout["val"]
    total_loss = 0.0
    with torch.no_grad():
        state = None
        for k in range(s.X.shape[0]):
            X = torch.from_numpy(s.X[k].T.astype(np.int64))
            Y = torch.from_numpy(s.Y[k].T.astype(np.int64))
            logits, state = model(X, state)
            ce = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1), reduction="none")
            total_loss += float((ce * torch.from_numpy(s.mask[k].T.reshape(-1))).sum())
    val = total_loss / s.num_tokens
    return {"val_loss": val, "val_bpc": val / math.log(2), "tokens_per_sec": tokens / elapsed, "steps": step,
            "train_s": elapsed, "threads": torch.get_num_threads()}


def train_jax(config, budget_s: float, log) -> dict:
    from lstm_jax import train

    c = config.copy_and_resolve_references()
    c.time_budget_s, c.eval_every_steps = budget_s, 0
    with tempfile.TemporaryDirectory() as workdir:
        s = train.train_and_evaluate(c, workdir, log=log, progress=False)
        from lstm_jax.metrics import read_metrics

        last = read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]
    return {"val_loss": last["val_loss"], "val_bpc": last["val_bpc"], "tokens_per_sec": s["tokens_per_sec_median"],
            "steps": s["steps"], "train_s": s["train_s"]}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.<field>=<value>")
    if unknown := [name for name in _ORDER.value if name not in ORDERS]:
        raise app.UsageError(f"--order: unknown {unknown}; choose from {ORDERS}")
    logging.set_verbosity(logging.ERROR)  # JAX's backend probing
    config, budget = _CONFIG.value, _BUDGET.value
    if config.data.val_fraction <= 0:
        raise app.UsageError("the config needs a validation split (config.data.val_fraction > 0)")
    log = lambda m: print(m, file=sys.stderr, flush=True)
    results = {}
    for name in _ORDER.value:
        log(f"=== {name}: {budget:.0f} s of training")
        before = bench.cpu_ticks()
        results[name] = (train_torch if name == "torch" else train_jax)(config, budget, log)
        results[name]["steal_percent"] = bench.steal_percent(before, bench.cpu_ticks())
    c = config
    print(f"{c.num_layers} x {c.num_hiddens} LSTM, batch {c.batch_size} x {c.num_steps}, {c.optimizer} lr "
          f"{c.learning_rate}, {budget:.0f} s of training each, validation split of {c.data.corpus}:")
    for name, r in results.items():
        print(f"  {name:>5}: {r['val_loss']:.4f} nats/char ({r['val_bpc']:.4f} bits), {r['tokens_per_sec']:,.0f} "
              f"tokens/s, {r['steps']} steps; the hypervisor's steal {r['steal_percent']:.0f}%")


if __name__ == "__main__":
    app.run(main)
