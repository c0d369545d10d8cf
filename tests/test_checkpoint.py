"""Checkpoints and resume: bit-exact continuation, crash safety, fallbacks, old workdirs, one writer."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import ml_collections
import pytest

from conftest import REPO, TINY_CLI, assert_same_params, one_error_line, quiet, run_cli
from lstm_jax import checkpoint, configs, experiment, train
from lstm_jax.errors import UserError
from lstm_jax.metrics import read_metrics

COMPARED = ("epoch", "step", "train_loss", "grad_norm", "val_loss", "val_ppl")
DATA = os.path.join(REPO, "tests", "data")


def metrics(workdir):
    return [{k: r.get(k) for k in COMPARED} for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def stop_after(n_calls):
    """A should_stop that turns true at its n-th poll (polls come after each compiled call)."""
    polls = iter(range(10**9))
    return lambda: next(polls) >= n_calls - 1


def test_round_trip_of_every_item(tiny_config, tmp_path):
    exp = experiment.Experiment.from_config(tiny_config)
    ts = exp.init_train_state()
    lstm_state = jax.tree.map(lambda a: a + 0.5, exp.model.initial_state(tiny_config.batch_size))
    meta = {"epoch": 1, "batch": 3, "partial": {"loss": [1.5, 2.25]}}
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"))
    assert ckpts.save(7, {"train_state": ts, "lstm_state": lstm_state}, meta, tiny_config, exp.corpus.vocab)
    assert not ckpts.save(7, {"train_state": ts, "lstm_state": lstm_state}, meta, tiny_config,
                          exp.corpus.vocab)  # same step: kept, not overwritten
    r = ckpts.restore(7, exp.abstract_arrays())
    ckpts.close()
    assert_same_params(r.arrays["train_state"], ts)  # params, optimizer state (with lr), step
    assert isinstance(r.arrays["train_state"], train.steps.TrainState)
    assert_same_params(r.arrays["lstm_state"], lstm_state)
    assert r.meta == {"format_version": checkpoint.FORMAT_VERSION, **meta}
    assert r.config == configs.as_dict(tiny_config) and r.vocab == exp.corpus.vocab
    # JSON beside the arrays, not pickle: readable by anything.
    assert json.loads((tmp_path / "checkpoints" / "7" / "vocab" / "metadata").read_text())["idx_to_token"][0] == "<unk>"


@pytest.mark.parametrize("variant,random_iter,dropout", [
    ("scratch", False, 0.0), ("concise", True, 0.0), ("scratch", False, 0.3)])
@pytest.mark.slow
def test_stopped_and_resumed_equals_uninterrupted(tiny_config, tmp_path, variant, random_iter, dropout):
    c = tiny_config
    c.model, c.data.random_iter, c.num_epochs, c.dropout = variant, random_iter, 2, dropout
    c.batches_per_call = 5  # 22 minibatches an epoch -> calls of 5, 5, 5, 5, 2
    c.data.val_fraction, c.checkpoint_every = 0.1, 100
    whole = train.train_and_evaluate(c, str(tmp_path / "whole"), **quiet)
    # Stopped mid-epoch 2 (after its 2nd call: minibatch 10 of 22, LSTM state carried) ...
    first = train.train_and_evaluate(c, str(tmp_path / "cut"), should_stop=stop_after(7), **quiet)
    assert first["interrupted"] and first["epochs"] == 1
    # ... and resumed by running the same thing again, with a different cut of the rest.
    c.batches_per_call = 3
    second = train.train_and_evaluate(c, str(tmp_path / "cut"), **quiet)
    assert not second["interrupted"]
    assert_same_params(second["train_state"], whole["train_state"])
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    assert second["best_val_loss"] == whole["best_val_loss"]


@pytest.mark.slow
def test_more_epochs_continue_from_the_end(tiny_config, tmp_path):
    tiny_config.num_epochs = 4
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"), **quiet)
    tiny_config.num_epochs = 2
    train.train_and_evaluate(tiny_config, str(tmp_path / "cut"), **quiet)
    tiny_config.num_epochs, tiny_config.log_every = 4, 1  # both safe to change
    again = train.train_and_evaluate(tiny_config, str(tmp_path / "cut"), **quiet)
    assert_same_params(again["train_state"], whole["train_state"])
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


@pytest.mark.slow
def test_incompatible_resume_names_the_fields(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    tiny_config.num_hiddens, tiny_config.model = 16, "concise"
    with pytest.raises(UserError, match=r"model \('scratch' -> 'concise'\); num_hiddens \(32 -> 16\)"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    tiny_config.overwrite = True
    summary = train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert summary["epochs"] == tiny_config.num_epochs
    assert len(read_metrics(str(tmp_path / "metrics.jsonl"))) == tiny_config.num_epochs


@pytest.mark.slow
def test_changed_corpus_is_refused(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"), **quiet)
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    tiny_config.data.path = str(other)
    with pytest.raises(UserError, match="data.path"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "run"), **quiet)


def test_results_without_checkpoints_are_refused_not_wiped(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    shutil.rmtree(tmp_path / "checkpoints")
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"has metrics.jsonl but no checkpoint to resume from; use "
                                        r"--config.overwrite=True to start over or another --workdir"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def truncate_arrays(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for f in files:
            if not f.startswith("_") and not f.endswith(".txt"):
                os.truncate(os.path.join(root, f), 7)


@pytest.mark.slow
# orbax's failed read leaves a callback for an event loop it has closed, or a coroutine it never awaited;
# the CLI drops the first (lstm_jax/cli.py), in process both reach pytest as warnings
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tiny_config, tmp_path):
    tiny_config.num_epochs, tiny_config.checkpoint_every = 3, 1
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"), **quiet)
    tiny_config.num_epochs = 2
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"), **quiet)
    truncate_arrays(tmp_path / "run" / "checkpoints" / "48")
    logged = []
    tiny_config.num_epochs = 3
    again = train.train_and_evaluate(tiny_config, str(tmp_path / "run"), log=logged.append, progress=False)
    warning = next(m for m in logged if m.startswith("warning:"))
    assert "checkpoints/48 is unreadable" in warning and "falling back to checkpoint 24" in warning
    assert (tmp_path / "run" / "unreadable-checkpoints" / "48").is_dir()  # moved aside, not deleted
    assert_same_params(again["train_state"], whole["train_state"])
    assert metrics(tmp_path / "run") == metrics(tmp_path / "whole")


def test_a_full_disk_during_a_save_loses_nothing(tiny_config, tmp_path, monkeypatch):
    tiny_config.num_epochs, tiny_config.checkpoint_every = 2, 1
    train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    tiny_config.num_epochs = 3
    from orbax.checkpoint._src.path import atomicity

    async def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full)
    with pytest.raises(UserError) as e:
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert str(e.value) == (f"cannot save checkpoint {tmp_path}/checkpoints/72 (the disk is full); "
                            f"checkpoint {tmp_path}/checkpoints/48 stays the latest")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "24", "48"]  # no half-written directory


def old_workdir(name, tmp_path):
    """A copy of a workdir written by an older lstm_jax, and its config as today's code reads it:
    0.1.0 (one layer, (B, H) state, data.num_val, lstm_impl 'auto'), 0.2.0 (keep_cores_awake), 0.4.0."""
    shutil.copytree(os.path.join(DATA, name), tmp_path / name)
    with open(tmp_path / name / "config.json") as f:
        return tmp_path / name, ml_collections.ConfigDict(configs.upgrade(json.load(f)))


def resume_old(name, tmp_path):
    """Resume an older version's stopped workdir to the end: today's summary, its metrics, and
    the older version's uninterrupted run (``<name>-uninterrupted.json``) to compare them with."""
    workdir, config = old_workdir(name, tmp_path)
    with open(os.path.join(DATA, f"{name}-uninterrupted.json")) as f:
        reference = json.load(f)
    summary = train.train_and_evaluate(config, str(workdir), **quiet)
    return summary, read_metrics(str(workdir / "metrics.jsonl")), reference


def test_upgrade_fills_in_new_fields_and_drops_retired_ones():
    saved = {"model": "scratch", "lstm_impl": "auto", "keep_cores_awake": True, "data": {"num_val": 0}}
    c = configs.upgrade(saved)
    assert "keep_cores_awake" not in c and "num_val" not in c["data"] and c["lstm_impl"] is None
    assert c["num_layers"] == 1 and c["data"]["corpus"] == "timemachine"  # today's defaults
    assert configs.differences(saved, configs.get_base_config()) == []
    # a retired field with a value that meant something else is kept, and named
    assert configs.differences({"data": {"num_val": 500}}, configs.get_base_config()) == ["data.num_val (500 -> None)"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v0.2-scratch", "v0.4-peephole"])
def test_workdirs_of_versions_0_2_and_0_4_resume(tmp_path, name):
    # Stopped mid-epoch by lstm_jax 0.2.0 (2 layers, dropout, a validation split, keep_cores_awake in its
    # config) and by 0.4.0 after 8 of 57 updates (lstm_peephole, forget bias 1, 2 layers, dropout, Adam
    # with warm-up and a cosine, a validation split); resumed here, each ends where its version's
    # uninterrupted run ended: fields added since default to what the older version did.
    summary, records, reference = resume_old(name, tmp_path)
    assert summary["final_train_ppl"] == pytest.approx(reference["final_train_ppl"], rel=1e-6)
    assert summary["best_val_loss"] == pytest.approx(reference["best_val_loss"], rel=1e-6)
    assert [r["step"] for r in records] == [r["step"] for r in reference["metrics"]]


@pytest.mark.slow
def test_workdirs_of_the_previous_version_resume(tmp_path):
    # Stopped by lstm_jax 0.1.0 in epoch 2 after minibatch 5; resumed here, it ends where
    # 0.1.0's uninterrupted run ended.
    summary, records, reference = resume_old("v0.1-scratch", tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    assert summary["final_train_ppl"] == pytest.approx(reference["final_train_ppl"], rel=1e-5)
    assert records[1]["grad_norm"] == pytest.approx(reference["metrics"][1]["grad_norm"], rel=1e-5)
    # and a finished one trains on when asked, then predicts
    workdir, config = old_workdir("v0.1-concise", tmp_path)
    config.num_epochs = 3
    assert train.train_and_evaluate(config, str(workdir), **quiet)["epochs"] == 3
    out = run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", "--prefix", "time", "--num_chars", "5")
    assert out.returncode == 0 and len(out.stdout.rstrip("\n")) == len("time") + 5, out.stderr


CRASH_IN_SECOND_SAVE = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity
    original, seen = atomicity.AtomicRenameTemporaryPath.finalize, []

    async def finalize(self):
        # Every item of the checkpoint is written; die before the step is committed.
        if self._final_path.parent.name == "checkpoints":
            seen.append(self)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    sys.path.insert(0, {tests!r})
    from conftest import tiny
    from lstm_jax import train
    c = tiny()
    c.num_epochs, c.checkpoint_every = 4, 1
    train.train_and_evaluate(c, sys.argv[1], log=print, progress=False)
""")


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(tiny_config, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_IN_SECOND_SAVE.format(tests=os.path.join(REPO, "tests")))
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, str(script), str(workdir)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]  # the half-done save is there
    ckpts = checkpoint.Checkpoints(str(workdir / "checkpoints"), read_only=True)
    assert ckpts.steps() == [0, 24]  # epoch 1's checkpoint, still the latest
    ckpts.close()
    # Resuming from it ends exactly where an uninterrupted run ends.
    tiny_config.num_epochs, tiny_config.checkpoint_every = 4, 1
    resumed = train.train_and_evaluate(tiny_config, str(workdir), **quiet)
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"), **quiet)
    assert_same_params(resumed["train_state"], whole["train_state"])
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints")) == [48, 72, 96]  # max_to_keep=3


def start_training(workdir, *extra):
    args = ["-m", "lstm_jax.train", *TINY_CLI, f"--workdir={workdir}", "--config.num_epochs=100000",
            "--config.log_every=1", "--config.checkpoint_every=1000", *extra]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:  # wait until training runs
        if line.startswith("epoch 3:"):
            return proc, args
    raise AssertionError(proc.stderr.read())


@pytest.mark.slow
def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
    proc, args = start_training(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "saved checkpoint" in out and "run the same command again to resume" in out
    done = len(read_metrics(str(tmp_path / "metrics.jsonl")))
    assert 3 <= done < 100000
    again = run_cli(*args[:-3], f"--config.num_epochs={done + 2}", "--config.log_every=1")
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint" in again.stdout
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, done + 3))


@pytest.mark.slow
def test_one_writer_per_workdir(tmp_path):
    # A second training process on the same workdir is refused at once, naming the holder;
    # once the first is killed (-9: no clean-up at all), the workdir is free again.
    first, args = start_training(tmp_path)
    try:
        second = run_cli(*args[1:] if args[0] != "-m" else args)
        line = one_error_line(second)
        assert f"{tmp_path} is in use by another process (PID {first.pid}, a training run)" in line
        first.kill()
        first.wait(timeout=60)
        third = run_cli(*args[:-3], "--config.num_epochs=1", "--config.overwrite=True")
        assert third.returncode == 0, third.stderr
    finally:
        first.kill()
