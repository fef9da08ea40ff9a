"""The denoising loop around interchangeable backends: conditioning -> latents -> images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .backends import UNet, VAEDecoder
from .conditioning import Conditioning

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 50
    guidance: float = 7.5
    width: int = 512
    height: int = 512


def initial_latents(seeds: list[int], height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """One CPU generator per prompt, so a prompt's noise does not depend on its batch."""
    shape = (1, LATENT_CHANNELS, height // vae_scale_factor, width // vae_scale_factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
                      for seed in seeds])


def denoise(unet: UNet, scheduler, conditioning: Conditioning, latents: torch.Tensor,
            settings: SamplingSettings,
            progress: Callable[[Iterable], Iterable] = lambda steps: steps) -> torch.Tensor:
    """Classifier-free guided sampling; ``conditioning`` holds unconditional rows, then conditional."""
    # A fresh scheduler per loop: multistep schedulers (PNDM) carry state from call to call.
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(settings.steps)
    latents = latents * scheduler.init_noise_sigma
    batch = latents.shape[0]
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        timestep = torch.full((2 * batch,), int(t), dtype=torch.int64)
        noise = unet(model_input, timestep, conditioning.encoder_hidden_states,
                     conditioning.level_states, conditioning.level_mask)
        # The scheduler keeps the latents on the CPU in float32; a GPU backend's prediction
        # comes back per step (64x64x4 values for SD at 512 px: negligible next to the UNet).
        unconditional, conditional = noise.to("cpu", torch.float32).chunk(2)
        guided = unconditional + settings.guidance * (conditional - unconditional)
        latents = scheduler.step(guided, t, latents, return_dict=False)[0]
    return latents


def decode(vae: VAEDecoder, latents: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 images."""
    images = vae(latents).to("cpu", torch.float32)
    return (images * 255).round().clamp(0, 255).to(torch.uint8)
