"""The generation modes, the UNet roles that serve them, and the level cap: the one place each is named.

A *role* is what a structured UNet computes (SPEC 4): ``values`` averages the value levels,
``keys`` gives each level its own keys. The stacked levels reach the UNet engine under the
role's input name (SPEC 5). A *mode* is what a caller asks for. ``values`` and ``keys`` run
the UNet of that role. ``plain`` (ordinary SD) and ``composable`` (Composable Diffusion, SPEC
3.6) give every UNet row a single level, which either role computes exactly (SPEC P1), so any
UNet serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import InputError

# Levels per prompt, the full prompt included: the most any pipeline or engine takes, and what a
# call caps them at unless it asks for more (extra phrases are dropped with a warning).
MAX_LEVELS = 64
DEFAULT_MAX_LEVELS = 8


@dataclass(frozen=True)
class Role:
    name: str
    level_input: str  # the UNet input the stacked levels feed (SPEC 5)


@dataclass(frozen=True)
class Mode:
    name: str
    role: Role | None  # the UNet it needs; None: its rows hold one level each, which any UNet computes
    uses_structure: bool  # needs the prompt's phrases (and so a parser)
    row_per_phrase: bool = False  # the batch axis, not the level axis, carries the phrases (SPEC 3.6)


VALUES = Role("values", "value_states")
KEYS = Role("keys", "key_states")
ROLES: dict[str, Role] = {role.name: role for role in (VALUES, KEYS)}
MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("values", VALUES, uses_structure=True),
    Mode("keys", KEYS, uses_structure=True),
    Mode("plain", None, uses_structure=False),
    Mode("composable", None, uses_structure=True, row_per_phrase=True),
)}


def setting_parts(setting: str) -> tuple[str, str | None]:
    """``values+magnet`` -> (``values``, ``magnet``); ``values`` -> (``values``, None): how ``eval`` and
    ``compare`` name a mode run with a binding method."""
    mode, _, binding = setting.partition("+")
    return mode, binding or None


def mode_named(name: object, parameter: str = "mode") -> Mode:
    if not isinstance(name, str) or name not in MODES:
        raise InputError(f"must be one of {', '.join(MODES)}, not {name!r}", parameter=parameter)
    return MODES[name]


def role_named(name: str) -> Role:
    """The role of a UNet that a family builds or a manifest records; anything else is a bug."""
    if name not in ROLES:
        raise ValueError(f"a UNet's mode (its role) is one of {', '.join(ROLES)}, not {name!r}")
    return ROLES[name]


def role_for(mode: Mode, roles: Iterable[str]) -> str:
    """The role whose UNet serves ``mode``, given the roles a pipeline has (the first serves any)."""
    return next(iter(roles)) if mode.role is None else mode.role.name
