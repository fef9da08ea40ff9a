"""The torch reference backend: the source of truth every compiled engine must match.

On the CPU it runs in float32; on a CUDA device it can also run in float16, which is how a
GPU serves SD in production. Inputs may come from anywhere and are moved to the backend's
device; outputs stay there (the pipeline brings back what it needs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import StructuredUNet


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _OnDevice:
    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype):
        self.model = module.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype

    def _floats(self, *tensors: torch.Tensor):
        return [t.to(self.device, self.dtype) for t in tensors]


class TorchTextEncoder(_OnDevice):
    def __init__(self, text_encoder: nn.Module, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        super().__init__(text_encoder, device, dtype)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids.to(self.device, torch.long)).last_hidden_state


class TorchUNet(_OnDevice):
    def __init__(self, unet: nn.Module, mode: str = "values", device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        super().__init__(StructuredUNet(unet, mode), device, dtype)
        self.mode = mode

    @torch.inference_mode()
    def __call__(self, sample, timestep, encoder_hidden_states, level_states, level_mask):
        sample, encoder_hidden_states, level_states, level_mask = self._floats(
            sample, encoder_hidden_states, level_states, level_mask)
        return self.model(sample, timestep.to(self.device), encoder_hidden_states, level_states, level_mask)


class LatentDecoder(nn.Module):
    """VAE decoder with SD's latent scaling in front and ``[0, 1]`` images out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)


class TorchVAEDecoder(_OnDevice):
    def __init__(self, vae: nn.Module, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        super().__init__(LatentDecoder(vae), device, dtype)

    @torch.inference_mode()
    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model(*self._floats(latent))
