"""One parse per prompt: a parser asked for levels, then pairs (or the graph), parses once."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

Parsed = TypeVar("Parsed")


class LastParse(Generic[Parsed]):
    """``parse(prompt)``, remembered for the last prompt only. A server's threads may share it:
    the remembered pair is replaced whole, and read once per call."""

    def __init__(self, parse: Callable[[str], Parsed]):
        self._parse = parse
        self._last: tuple[str, Parsed] | None = None

    def __call__(self, prompt: str) -> Parsed:
        last = self._last
        if last is None or last[0] != prompt:
            last = (prompt, self._parse(prompt))
            self._last = last
        return last[1]
