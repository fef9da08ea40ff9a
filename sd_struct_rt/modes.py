"""The generation modes and the UNet roles that serve them: the one place either is named.

A *role* is what a structured UNet computes (SPEC 4): ``values`` averages the value levels,
``keys`` gives each level its own keys. A *mode* is what a caller asks for. ``values`` and
``keys`` run the UNet of that role. ``plain`` (ordinary SD) and ``composable`` (Composable
Diffusion, SPEC 3.6) give every UNet row a single level, which either role computes exactly
(SPEC P1), so any UNet serves them.
"""

from __future__ import annotations

from typing import Iterable

ROLES = ("values", "keys")
MODES = ("values", "keys", "plain", "composable")
# Modes whose rows each hold one level: the batch axis, not the level axis, carries the phrases.
SINGLE_LEVEL_MODES = ("plain", "composable")


def role_for(mode: str, roles: Iterable[str]) -> str:
    """The role whose UNet serves ``mode``, given the roles a pipeline has (the first serves any)."""
    return next(iter(roles)) if mode in SINGLE_LEVEL_MODES else mode


def uses_structure(mode: str) -> bool:
    """Whether ``mode`` needs the prompt's phrases (and so a parser)."""
    return mode != "plain"
