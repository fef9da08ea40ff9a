"""ToMe's embedding-only parts (Hu et al., NeurIPS 2024), SPEC 3.7.2: token merging and end-token
substitution; its losses need gradients through the UNet and are left out.

Each object's first token becomes the composite ``1.1 * sum(object tokens) + 1.2 * sum(attribute
tokens)`` and the other object and attribute tokens become zero; the end-of-text token and the
padding after it become those of the prompt with its attributes removed, at the same positions.
"""

from __future__ import annotations

import re

import torch

from ..structure.spans import StructuredPrompt
from . import EncodedTexts

OBJECT_WEIGHT, ATTRIBUTE_WEIGHT = 1.1, 1.2  # ToMe's code (its paper writes a plain sum)


def without_attributes(prompt: StructuredPrompt) -> str:
    """The prompt with every paired attribute's characters removed, spaces closed up."""
    cut = sorted((part.start_char, part.end_char) for pair in prompt.pairs for part in pair.characters.attributes)
    kept, cursor = [], 0
    for start, end in cut:
        kept.append(prompt.prompt[cursor:start])
        cursor = max(cursor, end)
    kept.append(prompt.prompt[cursor:])
    return re.sub(r"\s+", " ", "".join(kept)).strip()


class TokenMerging:
    name = "tome"

    def texts(self, prompt: StructuredPrompt) -> list[str]:
        return [without_attributes(prompt)] if any(pair.attributes for pair in prompt.pairs) else []

    def apply(self, states: torch.Tensor, prompt: StructuredPrompt, encoded: EncodedTexts) -> torch.Tensor:
        bound = [pair for pair in prompt.pairs if pair.attributes]
        if not bound:
            return states.clone()
        out = states.clone()
        # Nested pairs ("a red brick house": red -> brick, brick -> house) merge inner first, and the
        # outer sum reads the inner composite, so no attribute is zeroed away unmerged.
        for pair in sorted(bound, key=lambda pair: pair.object.end):
            objects = list(range(pair.object.start + 1, pair.object.end + 1))  # BOS sits at 0
            attributes = [i for part in pair.attributes for i in range(part.start + 1, part.end + 1)]
            composite = OBJECT_WEIGHT * out[objects].sum(0) + ATTRIBUTE_WEIGHT * out[attributes].sum(0)
            out[objects + attributes] = 0
            out[objects[0]] = composite
        end = encoded.end_position(prompt.prompt)
        out[end:] = encoded.states[without_attributes(prompt)][end:]
        return out
