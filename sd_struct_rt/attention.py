"""Structured cross-attention (SPEC section 4) as a diffusers attention processor.

One processor serves every attention module of the UNet: self-attention (``attn1``) runs the
standard attention untouched; cross-attention (``attn2``) takes its keys and values from the
level inputs that ``StructuredUNet`` prepares once per call and passes as
``cross_attention_kwargs``:

* ``values`` mode: ``value_context`` is the masked mean of the value levels. Because ``to_v``
  has no bias, ``W_v mean(V_l) == mean(W_v V_l)``, so each layer is one standard attention.
* ``keys`` mode: ``key_states`` ``[N, L, T, D]`` with normalised ``key_weights`` ``[N, L]``;
  the levels run as one batched attention over an extra axis and are averaged after the
  second matmul, never between softmax and matmul (TensorRT can still fuse each level).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modes import VALUES, role_named


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., T, heads * d]`` -> ``[..., heads, T, d]``."""
    *lead, tokens, width = x.shape
    return x.reshape(*lead, tokens, heads, width // heads).transpose(-2, -3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[N, heads, T, d]`` -> ``[N, T, heads * d]``."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class AttentionRecorder:
    """Where each text position looks: the conditional rows' cross-attention probabilities,
    averaged over heads, key levels, steps and layers, on the latent grid ``[B, T, h, w]``.

    ``downsampling``, when given, keeps only the layers whose grid is the latent grid shrunk by
    one of these factors: a coarse grid (4x4 cells of 16 pixels on the shapes model) is larger
    than the objects it would locate, and averaging it in blurs the finer layers' maps.
    """

    def __init__(self, latent_height: int, latent_width: int, downsampling: Sequence[int] | None = None):
        self.height, self.width = latent_height, latent_width
        self.downsampling = None if downsampling is None else frozenset(downsampling)
        self.total: torch.Tensor | None = None
        self.layers = 0
        self.recorded: set[int] = set()  # the downsampling of every layer that was averaged in

    def add(self, probabilities: torch.Tensor) -> None:
        """``probabilities [N, Q, T]`` of one layer (heads and levels averaged), N = 2 x prompts."""
        conditional = probabilities[probabilities.shape[0] // 2:].float()
        prompts, queries, tokens = conditional.shape
        factor, height, width = self._grid(queries)
        if self.downsampling is not None and factor not in self.downsampling:
            return
        grid = conditional.transpose(1, 2).reshape(prompts, tokens, height, width)
        grid = F.interpolate(grid, size=(self.height, self.width), mode="bilinear", align_corners=False)
        self.total = grid if self.total is None else self.total + grid
        self.layers += 1
        self.recorded.add(factor)

    def _grid(self, queries: int) -> tuple[int, int, int]:
        """The layer's downsampling and grid: each stride-2 step rounds an odd side up, so a
        latent side of 18 gives grids of 9 and then 5, not 4.5."""
        factor, height, width = 1, self.height, self.width
        while height * width > queries:
            factor, height, width = 2 * factor, -(-height // 2), -(-width // 2)
        if height * width != queries:
            raise ValueError(f"{queries} queries are no grid of the {self.height}x{self.width} latent")
        return factor, height, width

    def maps(self) -> torch.Tensor:
        if not self.layers:
            raise ValueError(f"no cross-attention layer at downsampling {sorted(self.downsampling or ())} ran")
        return self.total / self.layers


def _probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)), averaged over heads: ``[N, Q, T]``."""
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
    return scores.softmax(dim=-1).mean(dim=1)


class StructuredAttnProcessor:
    """Attention for SD 1.x ``Attention`` modules with structured cross-attention inputs.

    With a ``recorder`` set, cross-attention also hands it its probabilities (computed apart,
    so the image is the same as without)."""

    recorder: AttentionRecorder | None = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        value_context: torch.Tensor | None = None,
        key_states: torch.Tensor | None = None,
        key_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        heads = attn.heads
        query = _split_heads(attn.to_q(hidden_states), heads)
        if encoder_hidden_states is None:
            key = _split_heads(attn.to_k(hidden_states), heads)
            value = _split_heads(attn.to_v(hidden_states), heads)
            out = F.scaled_dot_product_attention(query, key, value)
        elif key_states is not None:
            # encoder_hidden_states is the single value context (the merged sequence m).
            batch, levels = key_states.shape[:2]
            value = _split_heads(attn.to_v(encoder_hidden_states), heads)
            keys = _split_heads(attn.to_k(key_states.flatten(0, 1)), heads)  # [N*L, heads, T, d]
            # Levels ride on the batch axis, so each is exactly a standard 4-D attention.
            per_level = F.scaled_dot_product_attention(
                query.repeat_interleave(levels, dim=0), keys, value.repeat_interleave(levels, dim=0))
            per_level = per_level.unflatten(0, (batch, levels))
            out = torch.einsum("nl,nlhsd->nhsd", key_weights, per_level)
            if self.recorder is not None:
                per_key = _probabilities(query.repeat_interleave(levels, dim=0), keys).unflatten(0, (batch, levels))
                self.recorder.add(torch.einsum("nl,nlqt->nqt", key_weights, per_key))
        else:
            key = _split_heads(attn.to_k(encoder_hidden_states), heads)
            values_from = encoder_hidden_states if value_context is None else value_context
            value = _split_heads(attn.to_v(values_from), heads)
            out = F.scaled_dot_product_attention(query, key, value)
            if self.recorder is not None:
                self.recorder.add(_probabilities(query, key))
        return attn.to_out[1](attn.to_out[0](_merge_heads(out)))


def _check_sd1_attention(attn) -> None:
    # The processor implements only what SD 1.x attention modules use; anything else would be
    # silently wrong, so refuse it.
    unsupported = [name for name in ("spatial_norm", "group_norm", "norm_q", "norm_k")
                   if getattr(attn, name, None) is not None]
    if unsupported or attn.residual_connection or attn.rescale_output_factor != 1.0 or attn.norm_cross:
        raise ValueError(f"attention module with {unsupported or 'extra options'} is not SD 1.x")


def _has_structured_attention(unet: nn.Module) -> bool:
    return all(isinstance(processor, StructuredAttnProcessor) for processor in unet.attn_processors.values())


def structured_attention(unet: nn.Module) -> nn.Module:
    """Give every attention module of a diffusers UNet the structured processor, and return the UNet.

    From here on the UNet takes level inputs; without them (plain calls) it computes exactly what
    diffusers' own processor does (SPEC P1). Nothing else installs it: ``StructuredUNet`` calls
    this on the UNet it wraps, and ``processors_kept`` gives a borrowed UNet its own back.
    """
    if not _has_structured_attention(unet):
        for name, module in unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                _check_sd1_attention(module)
        unet.set_attn_processor(StructuredAttnProcessor())
    return unet


@contextlib.contextmanager
def processors_kept(unet: nn.Module):
    """The UNet's own attention processors back after the block, for code that borrows a caller's UNet."""
    processors = unet.attn_processors
    try:
        yield unet
    finally:
        unet.set_attn_processor(processors)


class StructuredUNet(nn.Module):
    """A diffusers UNet whose cross-attention takes stacked levels and a level mask (SPEC 5).

    ``forward(sample, timestep, encoder_hidden_states, level_states, level_mask, *added)``: in
    ``values`` mode ``encoder_hidden_states`` is the key context and ``level_states`` the value
    levels; in ``keys`` mode ``level_states`` are the key levels and ``encoder_hidden_states``
    the value context; ``added`` are the UNet's added conditions named by ``added`` (SDXL's
    ``text_embeds`` and ``time_ids``). One level with mask 1 is plain Stable Diffusion.
    """

    def __init__(self, unet: nn.Module, mode: str = "values", added: tuple[str, ...] = ()):
        super().__init__()
        self.role = role_named(mode)
        self.unet = structured_attention(unet)
        self.added = added  # names of the UNet's added conditions, which follow level_mask (SDXL's)

    def cross_attention_downsampling(self) -> tuple[int, ...]:
        """How much smaller than the latent grid each cross-attention layer's grid is, e.g. (1, 2, 4, 8)
        for SD 1.x: down block ``i`` works at ``2**i``, the mid block at the deepest, up blocks mirror."""
        depth = len(self.unet.down_blocks)
        factors = set()
        for name, _ in self.unet.named_modules():
            if not name.endswith("attn2"):
                continue
            block, index = name.split(".")[:2]
            if block == "down_blocks":
                factors.add(2 ** int(index))
            elif block == "up_blocks":
                factors.add(2 ** (depth - 1 - int(index)))
            else:  # the mid block, at the deepest level
                factors.add(2 ** (depth - 1))
        return tuple(sorted(factors))

    @contextlib.contextmanager
    def recording(self, recorder: AttentionRecorder):
        """Hand every cross-attention's probabilities to ``recorder`` during the block."""
        processors = {id(processor): processor for processor in self.unet.attn_processors.values()}
        for processor in processors.values():
            processor.recorder = recorder
        try:
            yield recorder
        finally:
            for processor in processors.values():
                processor.recorder = None

    def forward(self, sample, timestep, encoder_hidden_states, level_states, level_mask, *added_conditions):
        # SPEC P3: padded levels change nothing whatever finite values they hold. Zeroed before
        # any product, a huge pad cannot overflow (3e38 * W_k is inf, and inf * 0 is NaN).
        real = (level_mask > 0)[:, :, None, None]
        level_states = torch.where(real, level_states, torch.zeros((), dtype=level_states.dtype,
                                                                   device=level_states.device))
        weights = level_mask / level_mask.sum(dim=1, keepdim=True)
        if self.role is VALUES:
            # The one place the value levels are averaged: every layer then sees one context.
            levels = {"value_context": torch.einsum("nl,nltd->ntd", weights, level_states)}
        else:
            levels = {"key_states": level_states, "key_weights": weights}
        added = dict(zip(self.added, added_conditions)) if self.added else None
        return self.unet(sample, timestep, encoder_hidden_states, cross_attention_kwargs=levels,
                         added_cond_kwargs=added, return_dict=False)[0]
