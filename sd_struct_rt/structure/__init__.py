"""Structure stage: prompt -> noun-phrase token spans (SPEC sections 1-2)."""

from __future__ import annotations

from .. import inputs
from ..text import preprocess, tokenize_with_offsets
from .parsers import Parser
from .spans import StructuredPrompt, token_pairs, token_spans


def analyse(prompt: str, parser: Parser | None, tokenizer, pairs: bool = False) -> StructuredPrompt:
    """Preprocess ``prompt`` and find its levels, and with ``pairs`` its attribute-object pairs
    (when the parser gives them); ``parser=None`` gives a plain prompt."""
    text = preprocess(inputs.nonempty(prompt, "the prompt"))
    if parser is None:
        return StructuredPrompt(text, ())
    tokenized = tokenize_with_offsets(tokenizer, text)
    structured = token_spans(tokenized, parser.phrases(text))
    finder = getattr(parser, "attribute_pairs", None)
    if not pairs or finder is None:
        return structured
    return StructuredPrompt(structured.prompt, structured.spans, structured.dropped,
                            token_pairs(tokenized, finder(text)))
