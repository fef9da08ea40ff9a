"""Text-side binding methods (SPEC 3.7): edits of the full prompt's text states, nothing else.

A method changes what the UNet reads, never the UNet: no extra rows, no gradients, so every
engine runs it as it is. It acts on every sequence that stands for the full prompt (``e0``, each
aligned level ``a_i`` and the merged ``m``; in ``composable`` mode the full-prompt component),
never on the unconditional row, a phrase encoded alone or SDXL's pooled embedding. What it needs
encoded besides the prompt (``texts``) joins the batch's text-encoder call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..structure.spans import StructuredPrompt


@dataclass(frozen=True)
class EncodedTexts:
    """The states of the extra texts a method asked for, and the token count (BOS, EOS excluded) of
    those and of the batch's prompts."""

    states: dict[str, torch.Tensor]  # text -> [T, D]
    lengths: dict[str, int]
    positions: int  # T

    def end_position(self, text: str) -> int:
        """Where the text's end-of-text token sits (the last position, for a text CLIP truncates)."""
        return min(self.lengths[text] + 1, self.positions - 1)

    def last_word(self, text: str) -> torch.Tensor:
        """The state of the text's last token (BOS sits at 0)."""
        return self.states[text][self.end_position(text) - 1]

    def end(self, text: str) -> torch.Tensor:
        """The state of the text's end-of-text token."""
        return self.states[text][self.end_position(text)]


class BindingMethod(Protocol):
    name: str

    def texts(self, prompt: StructuredPrompt) -> list[str]:
        """Texts to encode on their own for ``prompt``."""

    def apply(self, states: torch.Tensor, prompt: StructuredPrompt, encoded: EncodedTexts) -> torch.Tensor:
        """One full-prompt sequence ``[T, D]`` of ``prompt``, bound; ``states`` is left as it was."""


def _methods() -> dict[str, BindingMethod]:
    from .magnet import Magnet
    from .token_merging import TokenMerging

    return {method.name: method for method in (Magnet(), TokenMerging())}


BINDINGS: dict[str, BindingMethod] = _methods()
