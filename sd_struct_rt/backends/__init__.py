"""Interchangeable engines for the three networks of the pipeline.

Every backend takes and returns CPU or device ``torch`` tensors with the names and shapes of
SPEC section 5, so the pipeline and the tests treat them alike.
"""

from __future__ import annotations

from typing import Protocol

import torch

# SPEC section 5: the UNet's stacked-levels input is named after the role the levels play.
LEVEL_INPUTS = {"values": "value_states", "keys": "key_states"}


class TextEncoder(Protocol):
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[M, 77]`` token ids -> ``[M, 77, D]`` last hidden states."""


class UNet(Protocol):
    mode: str  # "values" or "keys": which role the stacked levels play

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 level_states: torch.Tensor, level_mask: torch.Tensor) -> torch.Tensor:
        """Noise prediction ``[N, 4, h, w]``."""


class VAEDecoder(Protocol):
    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        """Denoised latents ``[N, 4, h, w]`` -> images ``[N, 3, 8h, 8w]`` in ``[0, 1]``."""
