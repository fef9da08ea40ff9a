"""The torch reference backend: the source of truth every compiled engine must match."""

from __future__ import annotations

import torch
from torch import nn

from ..attention import StructuredUNet


class TorchTextEncoder:
    def __init__(self, text_encoder: nn.Module):
        self.text_encoder = text_encoder

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.long()).last_hidden_state


class TorchUNet:
    def __init__(self, unet: nn.Module, mode: str = "values"):
        self.model = StructuredUNet(unet, mode)
        self.mode = mode

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, level_states, level_mask):
        return self.model(sample, timestep, encoder_hidden_states, level_states, level_mask)


class LatentDecoder(nn.Module):
    """VAE decoder with SD's latent scaling in front and ``[0, 1]`` images out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)


class TorchVAEDecoder:
    def __init__(self, vae: nn.Module):
        self.model = LatentDecoder(vae)

    @torch.inference_mode()
    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model(latent)
