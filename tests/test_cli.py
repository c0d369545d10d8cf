"""Every command line: --help exits 0, and each kind of bad input is one error line, exit 2."""

import os

import pytest

from conftest import TINY_CLI, one_error_line, run_cli

pytestmark = pytest.mark.slow  # every test here starts Python processes

CLIS = ["lstm_jax.train", "lstm_jax.predict", "lstm_jax.evaluate", "lstm_jax.sweep"]


@pytest.mark.parametrize("cli", CLIS)
def test_help_exits_zero(cli):
    out = run_cli("-m", cli, "--help")
    assert out.returncode == 0, out.stderr
    assert f"python -m {cli}" in out.stdout and "--workdir" in out.stdout or "--out" in out.stdout


def write(tmp_path, text):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


BASE = "from lstm_jax.configs import get_base_config\n"


@pytest.mark.parametrize("text,expected", [
    ("def get_config(:\n", "has a syntax error at line 1"),
    (BASE + "def get_config():\n    return 1 / 0\n", "get_config() raised ZeroDivisionError: division by zero (line 3)"),
    (BASE + "def get_config():\n    raise ValueError('boom')\n", "get_config() raised ValueError: boom"),
    ("x = 1\n", "has no get_config() function"),
    ("def get_config():\n    return None\n", "get_config() returned NoneType, not an ml_collections.ConfigDict"),
    ("import no_such_module\n", "raised ModuleNotFoundError: No module named 'no_such_module' (line 1) while loading"),
])
def test_config_file_errors(tmp_path, text, expected):
    for cli in ("lstm_jax.train", "lstm_jax.sweep"):
        line = one_error_line(run_cli("-m", cli, "--config", write(tmp_path, text), f"--workdir={tmp_path}/w"))
        assert expected in line and "config_config" not in line, line


def test_missing_config_file(tmp_path):
    line = one_error_line(run_cli("-m", "lstm_jax.train", "--config", "experiments/nope.py"))
    assert line == "error: config file experiments/nope.py does not exist"


@pytest.mark.parametrize("args,expected", [
    (["--config.num_epoch=3"], "--config.num_epoch: the config has no field 'num_epoch'"),
    (["--config.data.pth=x"], "--config.data.pth: the config has no field 'data.pth'"),
    (["--config.num_epochs=2.5"], "--config.num_epochs=2.5"),
    (["--config.data.path=/does/not/exist.txt"], "/does/not/exist.txt does not exist"),
    (["--config.data.path=/tmp"], "corpus directory /tmp has no train.txt"),
    (["--config.data.url=not-a-url"], "config.data.url='not-a-url' is not a URL"),
    (["--config.model=gru"], "config.model must be one of 'scratch', 'concise', got 'gru'"),
    (["--config.learning_rate=-0.5"], "config.learning_rate must be positive, got -0.5"),
    (["--config.data.corpus=ptb"], "corpus ptb is read as words with <eos> at each line's end: set "
                                   "config.data.token='word' and config.data.normalize='eos'"),
    (["--config.data.corpus=wt103"], "config.data.corpus must be one of"),
    (["--config.data.val_fraction=0.6", "--config.data.test_fraction=0.5"], "must be < 1"),
    (["--config.num_hiddens=100000"], "needs about"),
    (["extra"], "unexpected arguments ['extra']"),
    (["--config.num_hiddens=None"], "--config.num_hiddens=None"),  # only fields whose default is unset
])
def test_train_bad_input_is_one_line(tmp_path, args, expected):
    line = one_error_line(run_cli("-m", "lstm_jax.train", *TINY_CLI, f"--workdir={tmp_path}/w", *args))
    assert expected in line, line
    assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing left behind


@pytest.mark.slow
def test_none_on_the_command_line_unsets_a_field(tmp_path):
    import json

    out = run_cli("-m", "lstm_jax.train", "--config", "experiments/shakespeare.py", f"--workdir={tmp_path}",
                  "--config.init=None", "--config.lstm_impl=None", "--config.data.corpus=timemachine",
                  "--config.num_hiddens=8", "--config.num_layers=1", "--config.num_updates=1",
                  "--config.batch_size=4", "--config.num_steps=10",
                  "--config.time_budget_s=0", "--config.data.max_tokens=2000", "--config.data.val_fraction=0")
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert saved["init"] is None and saved["lstm_impl"] is None and saved["cell"] == "lstm"


@pytest.mark.parametrize("workdir,expected", [
    ("/proc/lstm_jax_run", "cannot write to /proc/lstm_jax_run"),
    ("FILE", "exists and is not a directory"),
])
def test_unwritable_workdir_is_refused_before_compiling(tmp_path, workdir, expected):
    if workdir == "FILE":
        workdir = str(tmp_path / "a_file")
        open(workdir, "w").close()
    out = run_cli("-m", "lstm_jax.train", *TINY_CLI, f"--workdir={workdir}")
    assert expected in one_error_line(out)
    assert "compiled" not in out.stdout


def test_ctrl_c_while_exiting_is_ignored(tmp_path):
    """All is written once a program only exits; a Ctrl-C then used to kill it silently (exit -2)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    args = [sys.executable, "-m", "lstm_jax.train", *TINY_CLI, "--workdir", str(tmp_path), "--config.num_epochs=1"]
    assert run_cli(*args[1:]).returncode == 0
    for delay in (0.05, 0.2):
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:  # the finished run says so, then exits
            if "already trained" in line:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, (delay, proc.returncode, rest[-2000:])
