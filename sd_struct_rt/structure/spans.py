"""From phrases (characters of the prompt) to token spans (SPEC section 2, steps 3-6)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

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
class AttributePair:
    """An object noun and the attributes bound to it, as characters of the prompt (SPEC 2.8)."""

    object: Phrase
    attributes: tuple[Phrase, ...]


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
    pairs: tuple["TokenPair", ...] = ()  # attribute-object pairs, for a binding method (SPEC 2.8)
    # True once ``capped`` has said what ``dropped`` holds: capping it again says only what is new.
    reported: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class TokenPair:
    """An attribute-object pair as token spans of the prompt: the object, then its attributes."""

    object: PhraseSpan
    attributes: tuple[PhraseSpan, ...]
    characters: AttributePair  # the same pair as characters of the prompt


def quoted_list(texts: list[str] | tuple[str, ...], limit: int = 3) -> str:
    shown = ", ".join(repr(text if len(text) <= 40 else text[:37] + "...") for text in texts[:limit])
    return shown + (f" and {len(texts) - limit} more" if len(texts) > limit else "")


def capped(prompt: StructuredPrompt, max_levels: int) -> StructuredPrompt:
    """At most ``max_levels - 1`` phrases (the full prompt is always a level). One warning names every
    phrase that is not a level: the rest, and those ``token_spans`` found past the encoder's tokens."""
    room = max_levels - 1
    extra = tuple(span.text for span in prompt.spans[room:])
    past = () if prompt.reported else prompt.dropped
    if past or extra:
        reasons = (["some start after the tokens the text encoder reads"] if past else []) + \
                  ([f"only {room} phrases fit in {max_levels} levels"] if extra else [])
        left_out = past + extra
        many = len(left_out) > 1
        warnings.warn(f"{len(left_out)} phrase{'s' * many} {'are' if many else 'is'} left out ({'; '.join(reasons)}): "
                      f"{quoted_list(left_out)}", StructureWarning, stacklevel=2)
    return StructuredPrompt(prompt.prompt, prompt.spans[:room], prompt.dropped + extra, prompt.pairs, reported=True)


def _token_range(tokenized: TokenizedPrompt, phrase: Phrase) -> tuple[int, int]:
    overlapping = [i for i, (first, last) in enumerate(tokenized.offsets)
                   if first < phrase.end_char and last > phrase.start_char]
    if not overlapping:
        raise InputError(f"phrase {tokenized.prompt[phrase.start_char:phrase.end_char]!r} covers no token "
                        f"of the prompt {tokenized.prompt!r}")
    return overlapping[0], overlapping[-1] + 1


def token_spans(tokenized: TokenizedPrompt, phrases: list[Phrase]) -> StructuredPrompt:
    """Token spans of ``phrases`` in their order, without whole-prompt spans, clipped to the tokens
    the text encoder reads; a phrase that starts beyond them is ``dropped`` (``capped`` says so)."""
    whole, capacity = (0, len(tokenized.tokens)), tokenized.capacity
    spans, dropped = [], []
    for phrase in phrases:
        start, end = _token_range(tokenized, phrase)
        # A parser may split inside a BPE token (spaCy reads "id" as "i" "d"); the level is whole
        # tokens, so its text, which is encoded alone, is theirs too: up to the last token read.
        first = min(phrase.start_char, tokenized.offsets[start][0])
        last = max(phrase.end_char, tokenized.offsets[end - 1][1])
        if (start, end) == whole:
            continue
        if start >= capacity:
            dropped.append(tokenized.prompt[first:last])
        elif end > capacity:
            spans.append(PhraseSpan(tokenized.prompt[first:tokenized.offsets[capacity - 1][1]], start, capacity))
        else:
            spans.append(PhraseSpan(tokenized.prompt[first:last], start, end))
    return StructuredPrompt(tokenized.prompt, tuple(spans), tuple(dropped))


def token_pairs(tokenized: TokenizedPrompt, pairs: list[AttributePair]) -> tuple[TokenPair, ...]:
    """Pairs whose object and attributes all lie within the tokens the text encoder reads."""
    def span(phrase: Phrase) -> PhraseSpan:
        start, end = _token_range(tokenized, phrase)
        return PhraseSpan(tokenized.prompt[phrase.start_char:phrase.end_char], start, end)

    found = [TokenPair(span(pair.object), tuple(map(span, pair.attributes)), pair) for pair in pairs]
    return tuple(pair for pair in found
                 if max(part.end for part in (pair.object, *pair.attributes)) <= tokenized.capacity)
