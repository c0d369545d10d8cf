"""The one exception type the command-line tools turn into a one-line message."""


class UserError(Exception):
    """Bad input from the user (config, corpus, checkpoint, prompt).

    The CLIs print ``error: <message>`` and exit non-zero instead of a traceback;
    the message must say what is wrong and what to do.
    """
