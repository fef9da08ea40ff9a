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
    """What the structure stage hands to conditioning: the preprocessed prompt and its levels.

    ``dropped`` are phrases the parser found that are not levels: past the tokens the text
    encoder reads, or beyond the levels allowed.
    """

    prompt: str
    spans: tuple[PhraseSpan, ...]
    dropped: tuple[str, ...] = ()


def quoted_list(texts: list[str] | tuple[str, ...], limit: int = 3) -> str:
    shown = ", ".join(repr(text if len(text) <= 40 else text[:37] + "...") for text in texts[:limit])
    return shown + (f" and {len(texts) - limit} more" if len(texts) > limit else "")


def capped(prompt: StructuredPrompt, max_levels: int) -> StructuredPrompt:
    """At most ``max_levels - 1`` phrases (the full prompt is always a level); one warning for the rest."""
    room = max_levels - 1
    if len(prompt.spans) <= room:
        return prompt
    extra = tuple(span.text for span in prompt.spans[room:])
    warnings.warn(f"only {room} phrases fit in {max_levels} levels; dropped {quoted_list(extra)}",
                  StructureWarning, stacklevel=2)
    return StructuredPrompt(prompt.prompt, prompt.spans[:room], prompt.dropped + extra)


def _token_range(tokenized: TokenizedPrompt, phrase: Phrase) -> tuple[int, int]:
    overlapping = [i for i, (first, last) in enumerate(tokenized.offsets)
                   if first < phrase.end_char and last > phrase.start_char]
    if not overlapping:
        raise InputError(f"phrase {tokenized.prompt[phrase.start_char:phrase.end_char]!r} covers no token "
                        f"of the prompt {tokenized.prompt!r}")
    return overlapping[0], overlapping[-1] + 1


def token_spans(tokenized: TokenizedPrompt, phrases: list[Phrase]) -> StructuredPrompt:
    """Token spans of ``phrases`` in their order, without whole-prompt spans, clipped to the tokens
    the text encoder reads (75 for CLIP); one warning names every phrase that starts beyond them."""
    whole, capacity = (0, len(tokenized.tokens)), tokenized.capacity
    spans, dropped = [], []
    for phrase in phrases:
        text = tokenized.prompt[phrase.start_char:phrase.end_char]
        start, end = _token_range(tokenized, phrase)
        if (start, end) == whole:
            continue
        if start >= capacity:
            dropped.append(text)
        else:
            spans.append(PhraseSpan(text, start, min(end, capacity)))
    if dropped:
        warnings.warn(f"{len(dropped)} phrase{'s' if len(dropped) > 1 else ''} start after token {capacity} and "
                      f"{'are' if len(dropped) > 1 else 'is'} dropped (CLIP reads only the first {capacity} tokens): "
                      f"{quoted_list(dropped)}", StructureWarning, stacklevel=2)
    return StructuredPrompt(tokenized.prompt, tuple(spans), tuple(dropped))
