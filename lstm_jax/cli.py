"""What the command-line programs share: one-line errors, flag parsing, signals.

Library modules never import this; the programs (``lstm_jax.train``,
``lstm_jax.predict``, ``scripts/sweep.py``) do.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn

import ml_collections

from lstm_jax import configs


def log(message: str) -> None:
    """Print without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(message)


def load_config(config_flag) -> tuple[ml_collections.ConfigDict, str]:
    """The config behind a ``DEFINE_config_file`` flag and the file's name without extension.

    ml-collections defers a bad path's error to the first attribute access:
    touch the config here so the user hears about it at once, in one line.
    """
    from absl import flags

    filename = flags.FLAGS[config_flag.name].config_filename
    try:
        config = config_flag.value
        config.num_epochs
    except (OSError, ImportError, AttributeError, SyntaxError) as e:
        fail(f"cannot load config file {filename}: {e}")
    return config, os.path.splitext(os.path.basename(filename.split(":")[0]))[0]


def config_fields_help() -> str:
    def walk(cfg, prefix=""):
        for key, value in cfg.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"  --config.{prefix}{key}={value!r}"
    return "\nconfig fields and their defaults (experiments/*.py change some):\n" + \
        "\n".join(walk(configs.get_base_config())) + "\n"


def setup() -> None:
    """Quiet the libraries' chatter so that what the user sees is ours."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # JAX's backend probing, orbax's notes
    default_hook = sys.unraisablehook

    def hook(unraisable):
        # A failed orbax restore leaves tensorstore callbacks that fire on a
        # closed event loop; the failure itself was already reported.
        if not (unraisable.exc_type is RuntimeError and "Event loop is closed" in str(unraisable.exc_value)):
            default_hook(unraisable)

    sys.unraisablehook = hook


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad overrides turned into one line naming the key."""
    from absl import flags

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
    return []


class StopRequest:
    """SIGINT/SIGTERM handler: the first asks training to checkpoint and stop, a second quits now."""

    def __init__(self, log: Callable[[str], None]):
        self.signum = None
        self._log = log

    def install(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            print("\nerror: interrupted again; quitting without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        self._log(f"{signal.Signals(signum).name}: finishing the current step, then saving a "
                  "checkpoint (interrupt again to quit at once)")

    def __call__(self) -> bool:
        return self.signum is not None
