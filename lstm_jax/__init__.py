"""LSTM language models in JAX: d2l's LSTM chapter, from scratch and with flax, and beyond.

Modules: ``data`` (corpora, vocabulary, minibatches), ``lstm`` and
``fast_lstm`` (the scratch math), ``models`` (both variants behind one
interface), ``steps`` (the pure train and eval steps), ``experiment`` (a run's
parts), ``train`` (the training loop and its CLI), ``checkpoint``, ``sweep``,
``predict``, ``evaluate``, ``allocator``. Nothing heavy is imported here, so
``python -m lstm_jax.train`` never imports itself twice.
"""

import os as _os
import signal as _signal
import sys as _sys

__version__ = "0.2.0"

if _sys.argv[:1] == ["-m"]:  # `python -m lstm_jax.<program>`, before its imports have run

    def _interrupted_while_starting(signum, frame):
        # Until the program installs its own handler (training: checkpoint, then stop) there is
        # nothing to save, and an exception raised here could land in a library callback.
        print("\ninterrupted while starting; nothing was written", file=_sys.stderr, flush=True)
        _os._exit(128 + signum)

    _signal.signal(_signal.SIGINT, _interrupted_while_starting)
    _signal.signal(_signal.SIGTERM, _interrupted_while_starting)

    from lstm_jax import allocator as _allocator

    _allocator.restart_with_huge_pages()  # the handler above, installed again, sees a signal held across it
