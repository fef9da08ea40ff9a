"""Structure stage: prompt -> noun-phrase token spans (SPEC sections 1-2)."""

from __future__ import annotations

from .. import inputs
from ..text import preprocess, tokenize_with_offsets
from .parsers import Parser
from .spans import StructuredPrompt, token_spans


def analyse(prompt: str, parser: Parser | None, tokenizer) -> StructuredPrompt:
    """Preprocess ``prompt`` and find its levels; ``parser=None`` gives a plain prompt."""
    text = preprocess(inputs.nonempty(prompt, "the prompt"))
    if parser is None:
        return StructuredPrompt(text, ())
    return token_spans(tokenize_with_offsets(tokenizer, text), parser.phrases(text))
