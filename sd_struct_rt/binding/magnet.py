"""Magnet's binding vectors (Zhuang et al., NeurIPS 2024), SPEC 3.7.1.

Each object's last token moves toward its own attribute and away from the other objects':

    e[j_k] += alpha_k * (w(a_k o_k) - w(o_k)) - beta_k * sum_{m != k} (w(a_m o_k) - w(o_k))

with ``w(x)`` the state of the last token of ``x`` encoded alone, and the strengths set by how
much the concept ``c_k = a_k o_k`` keeps its meaning into its padding:
``omega_k = cos(e(c_k)[end], e(c_k)[T-1])``, ``alpha_k = exp(0.6 - omega_k)``, ``beta_k = 1 - omega_k^2``.
"""

from __future__ import annotations

import math

import torch

from ..structure.spans import StructuredPrompt, TokenPair
from . import EncodedTexts

LAMBDA = 0.6  # Magnet's default


def attribute_text(pair: TokenPair) -> str:
    return " ".join(attribute.text for attribute in pair.attributes)


def concept(pair: TokenPair) -> str:
    """``a_k o_k``, or the object alone when it has no attribute."""
    return f"{attribute_text(pair)} {pair.object.text}" if pair.attributes else pair.object.text


def counter_concepts(prompt: StructuredPrompt, k: int) -> list[str]:
    """``a_m o_k`` for every other pair ``m`` with an attribute."""
    pair = prompt.pairs[k]
    return [f"{attribute_text(other)} {pair.object.text}" for m, other in enumerate(prompt.pairs)
            if m != k and other.attributes]


class Magnet:
    name = "magnet"

    def texts(self, prompt: StructuredPrompt) -> list[str]:
        texts = []
        for k, pair in enumerate(prompt.pairs):
            texts += [concept(pair), pair.object.text, *counter_concepts(prompt, k)]
        return list(dict.fromkeys(texts))

    def apply(self, states: torch.Tensor, prompt: StructuredPrompt, encoded: EncodedTexts) -> torch.Tensor:
        out = states.clone()
        for k, pair in enumerate(prompt.pairs):
            alone = encoded.last_word(pair.object.text)
            omega = float(torch.nn.functional.cosine_similarity(
                encoded.end(concept(pair)).float(), encoded.states[concept(pair)][-1].float(), dim=0))
            alpha, beta = math.exp(LAMBDA - omega), 1 - omega ** 2
            move = alpha * (encoded.last_word(concept(pair)) - alone) if pair.attributes else 0
            for counter in counter_concepts(prompt, k):
                move = move - beta * (encoded.last_word(counter) - alone)
            out[pair.object.end] += move  # the object's last token; BOS shifts positions by one
        return out
