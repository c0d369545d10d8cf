"""Data parallelism with jax.sharding: several CPU devices, two processes, bf16.

Device counts are fixed when jax starts (XLA_FLAGS), so every multi-device run
is a subprocess running the CLI the way a user would. Each is bounded in time
and killed if it overruns; ports are picked free.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, quiet
from lstm_jax import distributed
from lstm_jax.errors import UserError
from lstm_jax.metrics import read_metrics

TINY = ["--config", "experiments/tiny.py", "--config.data.max_tokens=1500", "--config.data.val_fraction=0.33",
        "--config.num_epochs=2", "--config.learning_rate=4.0", "--config.log_every=1", "--config.num_preds=5"]
RUN_TIMEOUT_S = 150


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COORDINATOR_ADDRESS"}  # read by JAX itself
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",  # (and conftest's flags: XLA_FLAGS is one variable)
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_together(commands: list[list[str]], devices: int, timeout: float = RUN_TIMEOUT_S,
                  stagger_s: float = 0):
    """Start all commands at once (or stagger_s apart); if one fails or time runs out, kill the rest.

    Returns [(returncode, stdout, stderr)] and the wall time in seconds.
    """
    start, procs, outs = time.perf_counter(), [], []
    try:
        for i, cmd in enumerate(commands):
            time.sleep(stagger_s if i else 0)
            procs.append(subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=_env(devices),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one died: the others would wait for it until their own timeout
            if time.perf_counter() - start > timeout:
                pytest.fail(f"{commands} ran over {timeout} s")
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            out, err = p.communicate()
            outs.append((p.returncode, out, err))
    return outs, time.perf_counter() - start


def _train(tmp_path, name: str, devices: int, *extra: str):
    workdir = tmp_path / name
    [(rc, out, err)], seconds = _run_together(
        [["-m", "lstm_jax.train", *TINY, f"--workdir={workdir}", *extra]], devices)
    assert rc == 0, err
    return out, read_metrics(str(workdir / "metrics.jsonl")), seconds


def _two_processes(workdir, *extra: str):
    port = _free_port()
    cmds = [["-m", "lstm_jax.train", *TINY, f"--workdir={workdir}", *extra,
             f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
            for i in range(2)]
    results, seconds = _run_together(cmds, devices=1)
    for rc, _, err in results:
        assert rc == 0, err
    return results, seconds


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny config on 1, 2 and 4 devices of one process, and on 2 processes."""
    tmp = tmp_path_factory.mktemp("dist")
    out = {n: _train(tmp, f"dev{n}", n) for n in (1, 2, 4)}
    results, seconds = _two_processes(tmp / "2proc")  # one workdir, seen by both (as on a shared disk)
    out["2proc"] = (results[0][1], read_metrics(str(tmp / "2proc" / "metrics.jsonl")), seconds)
    out["2proc_rank1"] = (results[1][1], tmp / "2proc")
    lines = [f"{k}: " + " ".join(f"{r['train_ppl']:.4f}/{r['val_ppl']:.4f}" for r in v[1]) + f" ({v[2]:.1f} s)"
             for k, v in out.items() if k != "2proc_rank1"]
    print("\n".join(lines))  # shown with pytest -s: the numbers README.md reports
    return out


@pytest.mark.slow
def test_the_modern_cells_do_not_depend_on_the_device_count(tmp_path):
    # slstm (the engine, 2 heads) and min_lstm (its whole-sequence path) in one model each, 1 and 2 devices.
    for cell in ("slstm", "min_lstm"):
        extra = (f"--config.cell={cell}", "--config.num_heads=2" if cell == "slstm" else "--config.num_layers=2")
        one, two = (_train(tmp_path, f"{cell}{n}", n, *extra)[1] for n in (1, 2))
        for a, b in zip(one, two):
            assert b["train_ppl"] == pytest.approx(a["train_ppl"], rel=1e-4) and b["step"] == a["step"]
            assert b["val_ppl"] == pytest.approx(a["val_ppl"], rel=1e-4)


@pytest.mark.slow
def test_first_line_names_the_devices(runs):
    assert runs[1][0].splitlines()[0].startswith("devices: cpu;")
    assert runs[4][0].splitlines()[0].startswith("devices: 4 x cpu;")
    assert runs["2proc"][0].splitlines()[0].startswith("devices: 2 x cpu, 2 processes;")


@pytest.mark.slow
@pytest.mark.parametrize("key", [2, 4, "2proc"])
def test_perplexity_does_not_depend_on_the_device_count(runs, key):
    one, other = runs[1][1], runs[key][1]
    assert [r["epoch"] for r in other] == [1, 2]
    for a, b in zip(one, other):
        # Only the order of float32 additions differs (gradient and loss
        # all-reduces); over 24 updates that stays far below 1e-4.
        assert b["train_ppl"] == pytest.approx(a["train_ppl"], rel=1e-4)
        assert b["val_ppl"] == pytest.approx(a["val_ppl"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        assert b["step"] == a["step"]
    assert one[-1]["train_ppl"] < one[0]["train_ppl"]


@pytest.mark.slow
def test_only_process_zero_writes_and_logs(runs):
    out, workdir = runs["2proc_rank1"]
    assert "epoch" not in out and "devices" not in out
    assert "epoch 2: perplexity" in runs["2proc"][0]
    assert [r["epoch"] for r in read_metrics(str(workdir / "metrics.jsonl"))] == [1, 2]  # written once


@pytest.mark.slow
def test_two_processes_resume_from_their_checkpoint(runs, tmp_path):
    # Both processes restore the checkpoint they saved together (replicated
    # train state, row-sharded hidden state) and train on as one run would.
    import shutil

    shutil.copytree(runs["2proc_rank1"][1], tmp_path / "2proc")
    results, _ = _two_processes(tmp_path / "2proc", "--config.num_epochs=3")
    assert "resuming from checkpoint" in results[0][1]
    _, alone, _ = _train(tmp_path, "alone", 1, "--config.num_epochs=3")
    resumed = read_metrics(str(tmp_path / "2proc" / "metrics.jsonl"))
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[2]["train_ppl"] == pytest.approx(alone[2]["train_ppl"], rel=1e-4)
    assert resumed[2]["val_ppl"] == pytest.approx(alone[2]["val_ppl"], rel=1e-4)


@pytest.mark.slow
def test_batch_size_must_divide_over_the_devices(tmp_path):
    [(rc, out, err)], _ = _run_together(
        [["-m", "lstm_jax.train", *TINY, f"--workdir={tmp_path}", "--config.batch_size=6"]], devices=4)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == ("error: config.batch_size=6 does not split evenly over 4 devices: the global "
                        "batch size must be a multiple of 4 (e.g. 4 or 8; 8 gives 2 rows per device)")


def test_batch_size_message_without_a_smaller_size():
    distributed.check_batch_size(8, 4)
    with pytest.raises(UserError, match=r"config.batch_size=3 .* multiple of 4 \(e.g. 4; 4 gives 1 rows"):
        distributed.check_batch_size(3, 4)


def _no_jax_initialize(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    return calls


def test_initialize_without_arguments_does_nothing(monkeypatch):
    calls = _no_jax_initialize(monkeypatch)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")  # only --coordinator=auto reads it
    assert distributed.initialize() is False  # a plain single-process run
    assert calls == []


@pytest.mark.parametrize("given, missing", [
    (dict(num_processes=1), "--coordinator, --process_id"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2), "--process_id"),
    (dict(process_id=0, num_processes=2), "--coordinator"),
    (dict(coordinator="127.0.0.1:1234"), "--num_processes, --process_id")])
def test_initialize_needs_every_part(monkeypatch, given, missing):
    calls = _no_jax_initialize(monkeypatch)
    with pytest.raises(UserError, match="needs --coordinator=HOST:PORT, --num_processes=N and") as e:
        distributed.initialize(**given)
    assert str(e.value).endswith(f"; missing {missing}") and "\n" not in str(e.value)
    assert calls == []


@pytest.mark.parametrize("args, message", [
    (("localhost", 2, 0), "--coordinator must be HOST:PORT"),
    (("127.0.0.1:1234", 2, 2), "--process_id must be in 0..1, got 2"),
    (("127.0.0.1:1234", 0, 0), "--num_processes must be at least 1, got 0"),
    (("auto", None, -1), "--process_id must be at least 0, got -1")])
def test_initialize_checks_the_values(monkeypatch, args, message):
    calls = _no_jax_initialize(monkeypatch)
    with pytest.raises(UserError, match=message):
        distributed.initialize(*args)
    assert calls == []


def test_initialize_hands_jax_the_flags_or_lets_it_detect_the_cluster(monkeypatch):
    calls, logged = _no_jax_initialize(monkeypatch), []
    assert distributed.initialize("10.0.0.1:1234", 2, 1, timeout_s=7, log=logged.append) is True
    assert distributed.initialize("auto") is True
    assert calls == [(("10.0.0.1:1234", 2, 1), dict(initialization_timeout=7)),
                     ((None, None, None), dict(initialization_timeout=300))]
    assert logged == ["joining coordinator 10.0.0.1:1234 as process 1 of 2 (waiting up to 7 s for all processes)"]


def test_a_jax_failure_is_one_line(monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("coordinator_address should be defined.\nmore detail")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    with pytest.raises(UserError) as e:
        distributed.initialize("auto")
    assert str(e.value) == ("jax.distributed.initialize failed, joining the cluster JAX detects: "
                            "coordinator_address should be defined.")


@pytest.mark.slow
def test_a_process_may_start_before_process_zero(tmp_path):
    # No waiting of our own: JAX retries the coordinator until initialization_timeout.
    port, code = _free_port(), ("import sys, jax; from lstm_jax import distributed as d; i = int(sys.argv[2]); "
                                "d.initialize(sys.argv[1], 2, i, timeout_s=60); "
                                "print(jax.process_count(), d.agree(i == 0))")
    results, _ = _run_together([["-c", code, f"127.0.0.1:{port}", str(i)] for i in (1, 0)],
                               devices=1, timeout=90, stagger_s=3)
    for rc, out, err in results:
        assert rc == 0, err
        assert out.strip().splitlines()[-1] == "2 True", out  # after gloo's own lines


@pytest.mark.slow
def test_orbax_saves_and_restores_across_two_processes(tmp_path):
    # Process 0 writes the replicated train state once; each process writes its
    # own rows of the sharded hidden state; both restore onto the same shardings.
    port, ckpt = _free_port(), tmp_path / "ckpt"
    results, _ = _run_together([["tests/_orbax_worker.py", str(i), "2", str(port), str(ckpt)]
                                for i in range(2)], devices=2)
    for rc, out, err in results:
        assert rc == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report == {"process": report["process"], "saved": True, "structure_equal": True,
                          "values_equal": True, "shardings_equal": True}
    assert (ckpt / "1" / "commit_success.txt").exists()
    written = {p.name for p in (ckpt / "1" / "default").iterdir()}
    assert {"ocdbt.process_0", "ocdbt.process_1", "_METADATA"} <= written, written


@pytest.mark.slow
def test_bfloat16_compute_trains_like_float32(tiny_config, tmp_path):
    # bf16 matmuls and activations, float32 parameters, loss and logits. Margin:
    # 1% per epoch (measured: under 0.2% for both models on this config).
    from lstm_jax import train

    c = tiny_config
    # lr 1: at lr 4 this tiny run passes a chaotic point in epoch 3 where any rounding (f32 vs
    # bf16, flax's cell or the fast path alike) moves that epoch's perplexity by 5%.
    c.model, c.learning_rate, c.num_epochs, c.data.val_fraction = "concise", 1.0, 4, 0.2
    f32 = train.train_and_evaluate(c, str(tmp_path / "f32"), **quiet)
    c.dtype = "bfloat16"
    bf16 = train.train_and_evaluate(c, str(tmp_path / "bf16"), **quiet)
    assert {a.dtype for a in jax.tree.leaves(bf16["train_state"].params)} == {np.dtype("float32")}
    a, b = read_metrics(str(tmp_path / "f32" / "metrics.jsonl")), read_metrics(str(tmp_path / "bf16" / "metrics.jsonl"))
    for ra, rb in zip(a, b):
        assert rb["train_ppl"] == pytest.approx(ra["train_ppl"], rel=0.01)
        assert rb["val_ppl"] == pytest.approx(ra["val_ppl"], rel=0.01)
    assert b[-1]["train_ppl"] < 0.85 * b[0]["train_ppl"]  # and it learns
    assert f32["final_train_ppl"] != bf16["final_train_ppl"]  # bf16 really was used
