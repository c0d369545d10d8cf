"""What the command-line programs share: config loading, one-line errors, exit codes, the stop request.

Library modules never import this; the programs (``lstm_jax.train``,
``predict``, ``evaluate``, ``sweep``) do. Every mistake a user can make on a
command line ends as one ``error: ...`` line on stderr and exit status 2.
Nothing heavy is imported at the top: :func:`exit_on_interrupt_while_starting`
runs before JAX is imported.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn

from lstm_jax.errors import UserError

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def exit_on_interrupt_while_starting() -> None:
    """Until the program installs its stop request there is nothing to save: a Ctrl-C exits at once."""
    def handler(signum, frame):
        os.write(2, b"\ninterrupted while starting; nothing was written\n")
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def log(message: str) -> None:
    """Print without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class StopRequest:
    """SIGINT/SIGTERM: the first asks training to checkpoint and stop, a second quits now.

    The handler only sets a flag and writes to stderr's file descriptor: it can run
    in the middle of any Python code, an import included.
    """

    def __init__(self):
        self.signum = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            os.write(2, b"\nerror: interrupted again; quitting without saving\n")
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                 "checkpoint (interrupt again to quit at once)\n".encode())

    def __call__(self) -> bool:
        return self.signum is not None


STOP = StopRequest()  # polled by the training loop; installed by run()


def _pop_config(argv: list[str]) -> tuple[str, list[str]]:
    """The ``--config FILE`` argument, and argv without it (its overrides stay for ml-collections)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--config="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    fail("--config needs a config file, e.g. --config experiments/scratch.py")


def _check_fields(config, argv: list[str]) -> None:
    for a in argv:
        if a.startswith("--config."):
            name = a.split("=", 1)[0][len("--config."):]
            section = config
            for key in name.split("."):
                if not hasattr(section, "keys") or key not in section:
                    fail(f"--config.{name}: the config has no field '{name}' (--help lists them)")
                section = section[key]


def run(main: Callable, doc: str, takes_config: bool = False, stoppable: bool = False) -> None:
    """Parse the flags, then ``main(config, config_path)`` (or ``main()``); one line per error.

    ``stoppable``: a Ctrl-C or SIGTERM asks the program to stop (``STOP``); when ``main``
    returns true (it stopped on that request) the program exits 128 + the signal's number,
    as shells expect (130 for Ctrl-C).
    """
    from absl import flags, logging

    sys.modules["__main__"].__doc__ = doc
    argv = list(sys.argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        if takes_config:
            flags.DEFINE_string("config", None, "Config file (experiments/*.py); then --config.<field>=<value>.")
        print(doc + "\n" + flags.FLAGS.main_module_help())
        sys.exit(0)
    try:
        config = path = None
        if takes_config:
            from ml_collections import config_flags

            from lstm_jax import configs

            path, argv = _pop_config(argv)
            config = configs.load_file(path)
            _check_fields(config, argv)
            sys.argv = argv  # ml-collections finds the --config.<field> overrides there
            config_flags.DEFINE_config_dict("config", config, lock_config=True)
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            fail(" ".join(str(e).split())[:300])
        if len(rest) > 1:
            fail(f"unexpected arguments {rest[1:]}; options look like --name=value or --config.<field>=<value>")
        logging.set_verbosity(logging.ERROR)  # JAX's backend probing, orbax's notes
        _quiet_orbax_leftovers()
        if stoppable:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, STOP._handle)
        stopped = main(flags.FLAGS.config, path) if takes_config else main()
    except UserError as e:
        fail(str(e))
    finally:
        # All is written; what is left is exiting, and the interpreter's shutdown puts SIGINT
        # back to its default action: a Ctrl-C there killed the process silently (exit -2).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if stopped and STOP.signum is not None:
        sys.stdout.flush()
        sys.exit(128 + STOP.signum)


def _quiet_orbax_leftovers() -> None:
    """A failed orbax restore (reported as one error line already) leaves tensorstore callbacks
    whose event loop is gone by the time they are collected; Python would print each one."""
    default = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            default(unraisable)

    sys.unraisablehook = hook
