"""From phrases (characters of the prompt) to token spans (SPEC section 2, steps 3-6)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..errors import InputError
from ..text import TokenizedPrompt


class StructureWarning(UserWarning):
    """Something of the prompt's structure had to be left out; the user should know."""


@dataclass(frozen=True)
class Phrase:
    """A phrase as characters ``[start_char, end_char)`` of the preprocessed prompt."""

    start_char: int
    end_char: int


@dataclass(frozen=True)
class PhraseSpan:
    """A level: the prompt's characters of a phrase and its half-open BPE token span (no BOS)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class StructuredPrompt:
    """What the structure stage hands to conditioning: the preprocessed prompt and its levels."""

    prompt: str
    spans: tuple[PhraseSpan, ...]


def _token_range(tokenized: TokenizedPrompt, phrase: Phrase) -> tuple[int, int]:
    overlapping = [i for i, (first, last) in enumerate(tokenized.offsets)
                   if first < phrase.end_char and last > phrase.start_char]
    if not overlapping:
        raise InputError(f"phrase {tokenized.prompt[phrase.start_char:phrase.end_char]!r} covers no token "
                        f"of the prompt {tokenized.prompt!r}")
    return overlapping[0], overlapping[-1] + 1


def token_spans(tokenized: TokenizedPrompt, phrases: list[Phrase]) -> list[PhraseSpan]:
    """Token spans of ``phrases`` in their order, without whole-prompt spans, clipped to the tokens
    the text encoder reads (75 for CLIP)."""
    whole, capacity = (0, len(tokenized.tokens)), tokenized.capacity
    spans = []
    for phrase in phrases:
        text = tokenized.prompt[phrase.start_char:phrase.end_char]
        start, end = _token_range(tokenized, phrase)
        if (start, end) == whole:
            continue
        if start >= capacity:
            warnings.warn(f"phrase {text!r} starts after token {capacity} and is dropped "
                          f"(CLIP reads only the first {capacity} tokens)", StructureWarning, stacklevel=2)
            continue
        spans.append(PhraseSpan(text, start, min(end, capacity)))
    return spans
