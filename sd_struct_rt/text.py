"""Prompt preprocessing and CLIP tokenization (SPEC sections 1 and 2.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOKENS = 77
CONTENT_TOKENS = MAX_TOKENS - 2  # BOS and EOS take two of the 77 positions


def preprocess(prompt: str) -> str:
    """Lowercase, strip whitespace, then surrounding dots, then whitespace again."""
    return prompt.lower().strip().strip(".").strip()


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """``[len(texts), 77]`` int64 ids, padded and truncated as SD 1.x does."""
    encoded = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt")
    return encoded.input_ids


@dataclass(frozen=True)
class TokenizedPrompt:
    """The BPE tokens of a prompt (BOS/EOS excluded, untruncated) and their character ranges."""

    prompt: str
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]


def tokenize_with_offsets(tokenizer, prompt: str) -> TokenizedPrompt:
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    return TokenizedPrompt(prompt, tuple(tokens), tuple(map(tuple, encoded.offset_mapping)))
