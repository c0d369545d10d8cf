"""What the command-line programs share: one-line errors, flag and config parsing, signals.

Library modules never import this; the programs (``lstm_jax.train``,
``lstm_jax.predict``, ``lstm_jax.evaluate``, ``lstm_jax.sweep``) do. Every
mistake a user can make on a command line ends as one ``error: ...`` line on
stderr and exit status 2.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import traceback
from typing import Callable, NoReturn

import ml_collections

from lstm_jax import configs

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def log(message: str) -> None:
    """Print without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], None], doc: str) -> None:
    """absl's ``app.run`` with our flag parsing; ``--help`` prints ``doc`` and the flags, exit 0."""
    from absl import app

    sys.modules["__main__"].__doc__ = doc

    def program(argv):
        setup()
        try:
            main(argv)
        finally:
            # Everything is written; what is left is exiting. The interpreter's shutdown puts
            # SIGINT back to its default action, so a Ctrl-C there (up to half a second with
            # JAX's threads to stop) killed the process with no message and exit -2.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    app.run(program, flags_parser=parse_flags)


def no_arguments(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; options look like --name=value or --config.<field>=<value>")


def setup() -> None:
    """Quiet the libraries' chatter so that what the user sees is ours."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # JAX's backend probing, orbax's notes
    default_hook = sys.unraisablehook

    def hook(unraisable):
        # A failed orbax restore leaves tensorstore callbacks and coroutines that
        # are collected later; the failure itself was already reported.
        text = f"{unraisable.exc_type.__name__}: {unraisable.exc_value} {unraisable.object!r}"
        if not any(s in text for s in ("Event loop is closed", "coroutine", "was never awaited")):
            default_hook(unraisable)

    sys.unraisablehook = hook


def config_fields_help() -> str:
    def walk(cfg, prefix=""):
        for key, value in cfg.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"  --config.{prefix}{key}={value!r}"
    return "\nconfig fields and their defaults (experiments/*.py change some):\n" + \
        "\n".join(walk(configs.get_base_config())) + "\n"


def check_config_file(spec: str) -> None:
    """Load ``path[:arg]`` as ml-collections will, turning each way it can fail into one line."""
    path, _, arg = spec.partition(":")
    if not path:
        fail("--config needs a config file, e.g. --config experiments/scratch.py")
    if os.path.isdir(path):
        fail(f"config file {path} is a directory; give a .py file with a get_config() function")
    if not os.path.isfile(path):
        fail(f"config file {path} does not exist")
    where = lambda e: next((f" (line {f.lineno})" for f in reversed(traceback.extract_tb(e.__traceback__))
                            if os.path.abspath(f.filename) == os.path.abspath(path)), "")
    try:
        module_spec = importlib.util.spec_from_file_location("lstm_jax_config_check", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        fail(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}")
    except Exception as e:  # noqa: BLE001 - whatever the file raises is the user's to see
        fail(f"config file {path} raised {type(e).__name__}: {e}{where(e)} while loading")
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        fail(f"config file {path} has no get_config() function")
    call = f"get_config({arg!r})" if arg else "get_config()"
    try:
        config = get_config(arg) if arg else get_config()
    except Exception as e:  # noqa: BLE001
        fail(f"config file {path}: {call} raised {type(e).__name__}: {e}{where(e)}")
    if not isinstance(config, ml_collections.ConfigDict):
        fail(f"config file {path}: {call} returned {type(config).__name__}, not an "
             "ml_collections.ConfigDict")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with ``--help`` exiting 0 and bad input turned into one line naming it."""
    from absl import flags

    if any(a in HELP_FLAGS for a in argv[1:]):
        try:
            flags.FLAGS([argv[0], "--helpfull" if "--helpfull" in argv else "--help"])
        except SystemExit:  # absl's help exits 1; asking for help is a success
            pass
        sys.exit(0)
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            check_config_file(argv[i + 1])
        elif a.startswith("--config="):
            check_config_file(a.split("=", 1)[1])
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown config field
        lines = str(e).strip("'\"").replace("\\n", "\n").replace("\\'", "'").splitlines()
        key = lines[0].strip("'\" ")
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        flag = next((o for o in overrides if o.split(".")[-1] == key), f"--config.{key}")
        hint = f" ({lines[1].strip()})" if len(lines) > 1 else ""
        fail(f"{flag}: the config has no field '{flag[len('--config.'):]}'{hint}")
    except (TypeError, ValueError) as e:  # a value of the wrong type for a field
        fail(" ".join(str(e).split())[:300])
    return []


def load_config(config_flag) -> tuple[ml_collections.ConfigDict, str]:
    """The config behind a ``DEFINE_config_file`` flag and the file's name without extension."""
    from absl import flags

    filename = flags.FLAGS[config_flag.name].config_filename
    try:
        config = config_flag.value
        config.num_epochs  # ml-collections defers some errors to the first attribute access
    except (OSError, ImportError, AttributeError, SyntaxError) as e:
        fail(f"cannot load config file {filename}: {' '.join(str(e).split())[:300]}")
    return config, os.path.splitext(os.path.basename(filename.split(":")[0]))[0]


class StopRequest:
    """SIGINT/SIGTERM handler: the first asks training to checkpoint and stop, a second quits now.

    The handler only sets a flag and writes to stderr's file descriptor: it can run in the
    middle of any Python code, an import included (importing there once failed on a
    half-imported tqdm).
    """

    def __init__(self):
        self.signum = None

    def install(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            print("\nerror: interrupted again; quitting without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                 "checkpoint (interrupt again to quit at once)\n".encode())

    def __call__(self) -> bool:
        return self.signum is not None

    def exit(self) -> None:
        """After a requested stop, exit 128 + signal number (130 for Ctrl-C), as shells expect."""
        if self.signum is not None:
            sys.stdout.flush()
            sys.exit(128 + self.signum)
