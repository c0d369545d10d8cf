import json
import os
import signal
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, run_cli
from lstm_jax import checkpoint, predict, train
from lstm_jax.errors import UserError
from lstm_jax.reporting import read_metrics

quiet = dict(log=lambda m: None, progress=False)
COMPARED = ("epoch", "train_ppl", "grad_norm", "val_ppl", "step")


def assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def metrics(workdir):
    return [{k: r.get(k) for k in COMPARED} for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def stop_after(n_calls):
    """A should_stop that turns true at its n-th poll (polls come after each compiled call)."""
    polls = iter(range(10**9))
    return lambda: next(polls) >= n_calls - 1


def test_round_trip_of_every_item(tiny_config, tmp_path):
    exp = train.Experiment.from_config(tiny_config)
    compiled, _ = train.compile_steps(exp, exp.init_train_state())
    ts, _ = train.train_epoch(exp, compiled, exp.init_train_state(), 0)
    lstm_state = jax.tree.map(lambda a: a + 0.5, exp.model.initial_state(tiny_config.batch_size))
    meta = {"epoch": 1, "batch": 3, "partial": {"loss": [1.5, 2.25]}}
    ckpts = checkpoint.Checkpoints(str(tmp_path))
    assert ckpts.save(int(ts.step), {"train_state": ts, "lstm_state": lstm_state}, meta, tiny_config,
                      exp.corpus.vocab)
    assert not ckpts.save(int(ts.step), {"train_state": ts, "lstm_state": lstm_state}, meta,
                          tiny_config, exp.corpus.vocab)  # same step: kept, not overwritten
    r = ckpts.restore(int(ts.step), exp.abstract_arrays())
    ckpts.close()
    assert_same_params(r.arrays["train_state"], ts)  # params, optimizer state (with lr), step
    assert isinstance(r.arrays["train_state"], train.TrainState)
    assert_same_params(r.arrays["lstm_state"], lstm_state)
    assert r.meta == {"format_version": checkpoint.FORMAT_VERSION, **meta}
    assert r.config == json.loads(tiny_config.to_json())
    assert r.vocab == exp.corpus.vocab
    # JSON beside the arrays, not pickle: readable by anything.
    step_dir = tmp_path / "checkpoints" / str(int(ts.step))
    assert json.loads((step_dir / "vocab" / "metadata").read_text())["idx_to_token"][0] == "<unk>"


@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("random_iter", [False, True])
def test_stopped_and_resumed_equals_uninterrupted(tiny_config, tmp_path, variant, random_iter):
    c = tiny_config
    c.model, c.data.random_iter, c.num_epochs = variant, random_iter, 2
    c.batches_per_call = 5  # 24 minibatches an epoch -> calls of 5, 5, 5, 5, 4
    c.data.num_val = 300
    c.checkpoint_every = 100
    whole = train.train_and_evaluate(c, str(tmp_path / "whole"), **quiet)

    # Stopped mid-epoch 2 (after its 2nd call: minibatch 10 of 24, LSTM state carried) ...
    first = train.train_and_evaluate(c, str(tmp_path / "cut"), should_stop=stop_after(7), **quiet)
    assert first["interrupted"] and first["epochs"] == 1
    # ... and resumed by running the same thing again.
    second = train.train_and_evaluate(c, str(tmp_path / "cut"), **quiet)
    assert not second["interrupted"]
    assert_same_params(second["train_state"], whole["train_state"])
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


def test_more_epochs_continue_from_the_end(tiny_config, tmp_path):
    tiny_config.num_epochs = 4
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"), **quiet)
    tiny_config.num_epochs = 2
    train.train_and_evaluate(tiny_config, str(tmp_path / "cut"), **quiet)
    tiny_config.num_epochs, tiny_config.log_every = 4, 1  # both safe to change
    again = train.train_and_evaluate(tiny_config, str(tmp_path / "cut"), **quiet)
    assert_same_params(again["train_state"], whole["train_state"])
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


def test_incompatible_resume_names_the_fields(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    tiny_config.num_hiddens, tiny_config.model = 16, "concise"
    with pytest.raises(UserError, match=r"model \('scratch' -> 'concise'\); num_hiddens \(32 -> 16\)"):
        train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    tiny_config.overwrite = True
    summary = train.train_and_evaluate(tiny_config, str(tmp_path), **quiet)
    assert summary["epochs"] == tiny_config.num_epochs
    assert len(read_metrics(str(tmp_path / "metrics.jsonl"))) == tiny_config.num_epochs


def test_changed_corpus_is_refused(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"), **quiet)
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    tiny_config.data.path = str(other)
    with pytest.raises(UserError, match="data.path"):
        train.train_and_evaluate(tiny_config, str(tmp_path / "run"), **quiet)


CRASH_IN_SECOND_SAVE = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity
    original, seen = atomicity.AtomicRenameTemporaryPath.finalize, []

    async def finalize(self):
        # Every item of the checkpoint is written; die before the step is committed.
        if self._final_path.parent.name == "checkpoints":
            seen.append(self)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    sys.path.insert(0, {tests!r})
    from conftest import *
    from lstm_jax import train
    c = get_base_config()
    c.num_hiddens, c.batch_size, c.num_steps, c.data.max_tokens = 32, 8, 10, 2000
    c.num_epochs, c.checkpoint_every = 4, 1
    train.train_and_evaluate(c, sys.argv[1], log=print, progress=False)
""")


def test_kill_during_save_keeps_the_previous_checkpoint(tiny_config, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_IN_SECOND_SAVE.format(tests=os.path.join(REPO, "tests")))
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, str(script), str(workdir)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == -signal.SIGKILL, out.stderr
    leftovers = [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert leftovers  # the half-done save is there, uncommitted
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    assert ckpts.steps() == [24]  # epoch 1's checkpoint, still the latest
    ckpts.close()
    model, params, vocab, config, step = predict.load_checkpoint(str(workdir))
    assert step == 24 and len(vocab) == 28

    # Resuming from it ends exactly where an uninterrupted run ends.
    tiny_config.num_epochs, tiny_config.checkpoint_every = 4, 1
    resumed = train.train_and_evaluate(tiny_config, str(workdir), **quiet)
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"), **quiet)
    assert_same_params(resumed["train_state"], whole["train_state"])
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints")) == [48, 72, 96]  # max_to_keep=3


def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
    args = ["-m", "lstm_jax.train", "--config", "experiments/scratch.py", f"--workdir={tmp_path}",
            "--config.num_hiddens=32", "--config.num_epochs=400", "--config.log_every=1",
            "--config.checkpoint_every=1000"]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in proc.stdout:  # wait until training runs
            if line.startswith("epoch 3:"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "saved checkpoint" in out and "run the same command again to resume" in out
    done = len(read_metrics(str(tmp_path / "metrics.jsonl")))
    assert 3 <= done < 400
    again = run_cli(*args[:-3], "--config.num_epochs=" + str(done + 2), "--config.log_every=1",
                    "--config.checkpoint_every=1000")
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint" in again.stdout
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, done + 3))


# ---- predicting from a checkpoint, through the real command line ----------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    out = run_cli("-m", "lstm_jax.train", "--config", "experiments/concise.py", f"--workdir={workdir}",
                  "--config.num_hiddens=64", "--config.num_epochs=4", "--config.log_every=4",
                  "--config.learning_rate=4.0", "--config.checkpoint_every=2")
    assert out.returncode == 0, out.stderr
    return workdir, out.stdout


def test_predict_matches_what_training_printed(trained):
    workdir, log = trained
    printed = log.split("epoch 4: perplexity")[1].splitlines()[1:3]
    out = run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", "--prefix", "time traveller",
                  "--prefix", "traveller", "--num_chars", "50")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [p[2:] for p in printed]  # log lines are indented by 2
    assert len(set(printed[0][len("  time traveller"):])) > 2  # a real continuation
    assert len(out.stdout.splitlines()[0]) == len("time traveller") + 50


def test_predict_sampling_and_step(trained):
    workdir, _ = trained
    run = lambda *a: run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", "--prefix", "the", *a)
    a, b = run("--temperature", "1.0", "--seed", "3"), run("--temperature", "1.0", "--seed", "3")
    assert a.returncode == 0 and a.stdout == b.stdout
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints"))
    old = run("--step", str(steps[0]))
    assert old.returncode == 0 and old.stdout.startswith("the")


def bad(workdir, *args):
    out = run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_predict_bad_inputs(trained, tmp_path):
    workdir, _ = trained
    assert "the prefix is empty" in bad(workdir, "--prefix", "")
    assert "no checkpoints in" in bad(tmp_path) and str(tmp_path) in bad(tmp_path)
    assert "no checkpoint 999" in bad(workdir, "--step", "999")
    out = run_cli("-m", "lstm_jax.predict", f"--workdir={workdir}", "--prefix", "Time!")
    assert out.returncode == 0
    assert out.stderr.strip() == "warning: prefix 'Time!': the vocabulary lacks ['T', '!']; they are read as <unk>"


def corrupt_copy(workdir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    step = max(int(p) for p in os.listdir(copy / "checkpoints"))
    damage(copy / "checkpoints" / str(step))
    return copy, step


def truncate_arrays(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for f in files:
            if not f.startswith("_") and not f.endswith(".txt"):
                os.truncate(os.path.join(root, f), 7)


@pytest.mark.parametrize("damage,expected", [
    (truncate_arrays, "is unreadable"),
    (lambda d: (d / "meta" / "metadata").write_text("{not json"), "is unreadable"),
    (lambda d: (d / "meta" / "metadata").write_text(json.dumps({"format_version": 99})), "format version 99"),
])
def test_predict_damaged_checkpoints(trained, tmp_path, damage, expected):
    copy, step = corrupt_copy(trained[0], tmp_path, damage)
    line = bad(copy)
    assert expected in line and f"{copy}/checkpoints/{step}" in line


def test_predict_reads_checkpoints_of_the_previous_version(trained, tmp_path):
    # Before lstm_impl became 'fast' | 'reference', configs were saved with 'auto'.
    def old_config(step_dir):
        path = step_dir / "config" / "metadata"
        saved = json.loads(path.read_text())
        saved["lstm_impl"] = "auto"
        path.write_text(json.dumps(saved))

    copy, _ = corrupt_copy(trained[0], tmp_path, old_config)
    args = ("--prefix", "time traveller", "--num_chars", "30")
    old = run_cli("-m", "lstm_jax.predict", f"--workdir={copy}", *args)
    new = run_cli("-m", "lstm_jax.predict", f"--workdir={trained[0]}", *args)
    assert old.returncode == 0 and new.returncode == 0, old.stderr
    assert old.stdout == new.stdout  # the same function: flax's cell ('auto' for concise) or the fast path
