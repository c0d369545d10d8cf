"""What the command-line programs share: config loading, one-line errors (exit status 2), the stop
request. Nothing heavy is imported at the top: this module is loaded before JAX."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn

from lstm_jax.errors import UserError


def _quit(signum: int, message: str) -> NoReturn:
    os.write(2, message.encode())  # signal handlers write to the descriptor: they may run inside print()
    os._exit(128 + signum)


def exit_on_interrupt_while_starting() -> None:
    """Until the program installs its stop request there is nothing to save: a Ctrl-C exits at once."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: _quit(signum, "\ninterrupted while starting; nothing was written\n"))


def log(message: str) -> None:
    """Print without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(message)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class StopRequest:
    """SIGINT/SIGTERM: the first asks training to checkpoint and stop, a second quits now."""

    signum = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            _quit(signum, "\nerror: interrupted again; quitting without saving\n")
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                 "checkpoint (interrupt again to quit at once)\n".encode())

    def __call__(self) -> bool:
        return self.signum is not None


STOP = StopRequest()  # polled by the training loop; installed by run()


def _define_config(argv: list[str]) -> tuple[str, list[str]]:
    """Load ``--config FILE`` as the ``config`` flag, refusing misspelled ``--config.<field>`` overrides;
    returns the file and argv without it (the overrides stay there for ml-collections)."""
    from ml_collections import config_flags

    from lstm_jax import configs

    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv) or a.startswith("--config="):
            path, n = (argv[i + 1], 2) if a == "--config" else (a.split("=", 1)[1], 1)
            break
    else:
        fail("--config needs a config file, e.g. --config experiments/scratch.py")
    argv = argv[:i] + argv[i + n:]
    config = configs.load_file(path)
    unset = configs.flatten(configs.as_dict(configs.get_base_config()))  # None: a field that may be unset
    for a in [a for a in argv if a.startswith("--config.")]:
        name, _, value = a[len("--config."):].partition("=")
        try:
            config[name]  # a dotted name reaches into sections
        except (KeyError, TypeError):
            fail(f"--config.{name}: the config has no field '{name}' (--help lists them)")
        if value == "None" and unset.get(name, 0) is None:  # ml-collections would set the string 'None'
            *section, field = name.split(".")
            (config[".".join(section)] if section else config)[field] = None
            argv.remove(a)
    sys.argv = argv  # ml-collections finds the --config.<field> overrides there
    config_flags.DEFINE_config_dict("config", config, lock_config=True)
    return path, argv


def run(main: Callable, doc: str, takes_config: bool = False, stoppable: bool = False) -> None:
    """Parse the flags, then ``main(config, config_path)`` (or ``main()``); one line per error.
    ``stoppable``: a signal sets ``STOP``; when ``main`` returns true (it stopped on that request)
    the program exits 128 + the signal's number, as shells expect (130 for Ctrl-C)."""
    import logging as std_logging

    from absl import flags, logging

    sys.modules["__main__"].__doc__ = doc
    if {"--help", "-h", "--helpshort", "--helpfull", "-?"} & set(sys.argv[1:]):
        if takes_config:
            flags.DEFINE_string("config", None, "Config file (experiments/*.py); then --config.<field>=<value>.")
        print(doc + "\n" + flags.FLAGS.main_module_help())
        sys.exit(0)
    try:
        path, argv = _define_config(list(sys.argv)) if takes_config else (None, list(sys.argv))
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            fail(" ".join(str(e).split())[:300])
        if len(rest) > 1:
            fail(f"unexpected arguments {rest[1:]}; options look like --name=value or --config.<field>=<value>")
        logging.set_verbosity(logging.ERROR)  # JAX's backend probing, orbax's notes
        # A failed orbax restore leaves tensorstore callbacks whose event loop is closed: unprinted.
        closed = lambda u: isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)
        sys.unraisablehook = lambda u, default=sys.unraisablehook: closed(u) or default(u)
        # ... and its failed read task, collected later, logs "Task exception was never retrieved"
        # with a traceback: the error itself was already reported as one line.
        std_logging.getLogger("asyncio").addFilter(lambda r: not r.getMessage().startswith("Task exception"))
        if stoppable:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, STOP._handle)
        stopped = main(flags.FLAGS.config, path) if takes_config else main()
    except UserError as e:
        fail(str(e))
    finally:
        # All is written; a Ctrl-C in the interpreter's shutdown killed the process silently (exit -2).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if stopped and STOP.signum is not None:
        sys.stdout.flush()
        sys.exit(128 + STOP.signum)
