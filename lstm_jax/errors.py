"""The one exception type the command-line tools turn into a one-line message."""


class UserError(Exception):
    """Bad input from the user (config, corpus, checkpoint, prompt): the CLIs print ``error: <message>``
    instead of a traceback, so the message must say what is wrong and what to do."""
