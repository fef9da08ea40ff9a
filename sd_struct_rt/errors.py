"""Errors the user can act on.

Anything raised as ``UserError`` reaches the terminal as exactly one line (its message) and a
non-zero exit status; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with what to do about it."""


class InputError(UserError, ValueError):
    """A bad argument to the pipeline; its message is the one line the CLI prints.

    ``parameter`` is the argument at fault, by the name its caller knows it by: the API's
    parameter (``guidance_scale``), or a flag's name where the CLI checks its flags with the same
    checks before it calls the pipeline. Most messages start with that name:
    ``InputError("must be 0 or more", parameter="guidance_scale")`` reads "guidance_scale must be
    0 or more", and ``named("guidance")`` gives the same line under another name (a server's
    field) without touching the text. A message worded otherwise is given whole with
    ``leads=False``: it still carries its parameter, and ``named`` returns it as it is.
    """

    def __init__(self, detail: str, *, parameter: str | None = None, leads: bool = True):
        self.detail, self.parameter = detail, parameter
        self.leads = leads and parameter is not None
        super().__init__(self.named(parameter))

    def named(self, name: str | None) -> str:
        """The message, with ``name`` in place of the parameter's where the message starts with it."""
        return f"{name} {self.detail}" if self.leads else self.detail
