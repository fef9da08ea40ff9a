"""Prompt preprocessing and CLIP tokenization (SPEC sections 1 and 2.4).

The tokenizer's ``model_max_length`` (77 for CLIP) is the text length everywhere: padding,
truncation, and the 75 content positions that spans may cover (BOS and EOS take two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def preprocess(prompt: str) -> str:
    """Lowercase, strip whitespace, then surrounding dots, then whitespace again."""
    return prompt.lower().strip().strip(".").strip()


def content_tokens(tokenizer) -> int:
    """How many BPE tokens of a prompt the text encoder reads (its length without BOS and EOS)."""
    return tokenizer.model_max_length - 2


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """``[len(texts), model_max_length]`` int64 ids, padded and truncated as SD does."""
    encoded = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
    return encoded.input_ids


def token_count(tokenizer, prompt: str) -> int:
    """BPE tokens of the preprocessed prompt, untruncated, BOS and EOS not counted."""
    return len(tokenizer(preprocess(prompt), add_special_tokens=False).input_ids)


@dataclass(frozen=True)
class TokenizedPrompt:
    """The BPE tokens of a prompt (BOS/EOS excluded, untruncated) and their character ranges."""

    prompt: str
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    capacity: int  # tokens the text encoder reads; spans are clipped to it


def tokenize_with_offsets(tokenizer, prompt: str) -> TokenizedPrompt:
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    return TokenizedPrompt(prompt, tuple(tokens), tuple(map(tuple, encoded.offset_mapping)),
                           content_tokens(tokenizer))
