"""Checks of the numbers a generation takes, shared by the pipeline and the CLI.

Each check is given the name the caller knows the value by (``guidance_scale`` in Python,
``guidance`` on the command line), so one rule gives both their one-line messages; the
``InputError`` carries that name as its ``parameter``, which leads the message.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings

from .errors import InputError
from .text import preprocess

MIN_SIDE, MAX_SIDE = 64, 2048
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
MAX_BATCH = 64  # prompts per call: --batch-size, and an engine profile's batch range


def whole_number(value: object, name: str, low: int, high: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"must be a whole number, not {value!r}", parameter=name)
    if not low <= value <= high:
        raise InputError(f"must be between {low} and {high}{hint}, not {value}", parameter=name)
    return int(value)


def steps(value: object, name: str = "num_inference_steps") -> int:
    return whole_number(value, name, 1, MAX_STEPS)


def seed(value: object, name: str = "seed") -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
        raise InputError(f"must be between 0 and 2**63-1, not {value}", parameter=name)
    return whole_number(value, name, 0, MAX_SEED)


def guidance(value: object, name: str = "guidance_scale") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"must be a number, not {value!r}", parameter=name)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"must be 0 or more (7.5 is SD's usual), not {value}", parameter=name)
    return float(value)


def image_side(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"must be a whole number of pixels, not {value!r}", parameter=name)
    if value % 8:
        raise InputError(f"{value} is not a multiple of 8 (the VAE works on 8x8 blocks); "
                         f"try {value // 8 * 8 or 8} or {value // 8 * 8 + 8}", parameter=name)
    return whole_number(value, name, MIN_SIDE, MAX_SIDE)


MAX_PROMPT_CHARACTERS = 1000  # CLIP reads about the first 300 characters; this is generous
MAX_TREE_CHARACTERS = 100_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, newline and carriage return are spaces


class InputWarning(UserWarning):
    """An input was cleaned on its way in; the user should know how."""


def text(value: object, name: str, limit: int = MAX_PROMPT_CHARACTERS) -> str:
    """A prompt-like string: valid Unicode, not absurdly long; control characters become spaces."""
    if not isinstance(value, str):
        raise InputError(f"must be a string, not {type(value).__name__}", parameter=name)
    if len(value) > limit:
        raise InputError(f"has {len(value)} characters, more than the {limit} taken "
                         "(CLIP reads about the first 300); shorten it", parameter=name)
    bad = _SURROGATE.search(value)
    if bad:
        raise InputError(f"holds an invalid character at position {bad.start()} (a lone surrogate, "
                         f"U+{ord(bad.group()):04X}); give valid Unicode text", parameter=name)
    cleaned, count = _CONTROL.subn(" ", value)
    if count:
        warnings.warn(f"{name}: {count} control character{'s' if count > 1 else ''} replaced by spaces",
                      InputWarning, stacklevel=2)
    return cleaned


def prompt(value: object, name: str, hint: str = "say what to draw") -> str:
    """A prompt: ``text`` that is ``nonempty``."""
    return nonempty(text(value, name), name, hint)


def nonempty(value: str, name: str, hint: str = "say what to draw") -> str:
    """``value``, unless nothing is left of it once preprocessed: then refused with ``hint``."""
    if not preprocess(value):
        raise InputError(f"is empty; {hint}", parameter=name)
    return value


# --- types of the API's other arguments: each refusal names its parameter ----------------------

def shown(value: object, limit: int = 60) -> str:
    """A value as a refusal quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def switch(value: object, name: str) -> bool:
    """A yes/no argument: True or False (0 and 1 are taken as those)."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise InputError(f"must be True or False, not {shown(value)}", parameter=name)


def name_or_none(value: object, name: str, choices: str) -> str | None:
    """A name such as a scheduler's: a string (checked against ``choices`` later) or None."""
    if value is not None and not isinstance(value, str):
        raise InputError(f"must be {choices} or None, not {shown(value)}", parameter=name)
    return value


def name_of(value: object, name: str, choices: str) -> str:
    """A required name, such as a device: a string."""
    if not isinstance(value, str):
        raise InputError(f"must be {choices}, not {shown(value)}", parameter=name)
    return value


def path_text(value: object, name: str, what: str) -> str:
    """A folder, model name or hub id given as a string or a path (``os.PathLike``), as a string."""
    import os

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InputError(f"must be {what} (a string or a path), not {shown(value)}", parameter=name)
    return value


def strings_or_none(value: object, name: str) -> None:
    """None, a string, or a list or tuple of strings; the refusal names the first item that is not."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)):
        raise InputError(f"must be a string or a list of strings, not {type(value).__name__}", parameter=name)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"must be a string or a list of strings; item {index} is "
                             f"{type(item).__name__} {shown(item)}", parameter=name)
