"""The official per-level loop, kept only as a speed baseline for benchmarks.

The official code runs one attention per level inside every cross-attention layer and
averages the outputs; ``StructuredUNet`` computes the same function with one attention per
layer (values mode). Benchmarks put the two side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import StructuredAttnProcessor, _merge_heads, _split_heads
from .modes import role_named


class LevelLoopProcessor(StructuredAttnProcessor):
    """Cross-attention as a Python loop over levels, one full attention each."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 key_states=None, value_states=None, level_weights=None):
        if encoder_hidden_states is None:
            return super().__call__(attn, hidden_states)
        heads = attn.heads
        query = _split_heads(attn.to_q(hidden_states), heads)
        outputs = []
        for level in range(level_weights.shape[1]):
            keys = key_states[:, level] if key_states is not None else encoder_hidden_states
            values = value_states[:, level] if value_states is not None else encoder_hidden_states
            outputs.append(F.scaled_dot_product_attention(
                query, _split_heads(attn.to_k(keys), heads), _split_heads(attn.to_v(values), heads)))
        out = torch.einsum("nl,lnhsd->nhsd", level_weights, torch.stack(outputs))
        return attn.to_out[1](attn.to_out[0](_merge_heads(out)))


class LevelLoopUNet(nn.Module):
    """Same inputs and function as ``StructuredUNet``, computed the official way."""

    def __init__(self, unet: nn.Module, mode: str = "values", added: tuple[str, ...] = ()):
        super().__init__()
        unet.set_attn_processor(LevelLoopProcessor())
        self.unet, self.role, self.added = unet, role_named(mode), added

    def forward(self, sample, timestep, encoder_hidden_states, level_states, level_mask, *added_conditions):
        weights = level_mask / level_mask.sum(dim=1, keepdim=True)
        added = dict(zip(self.added, added_conditions)) if self.added else None
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False, added_cond_kwargs=added,
                         cross_attention_kwargs={self.role.level_input: level_states, "level_weights": weights})[0]
