"""Errors the user can act on.

Anything raised as ``UserError`` reaches the terminal as exactly one line (its message) and a
non-zero exit status; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with what to do about it."""


class InputError(UserError, ValueError):
    """A bad argument to the pipeline; its message is the one line the CLI prints.

    Messages name the API's parameters (``guidance_scale``); the CLI validates its own flags
    with the same checks under the flags' names before it calls the pipeline.
    """
