"""The denoising loop around any backend's UNet: initial latents -> guided sampling -> pixels."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents [2B,...], timesteps [2B]) -> noise
Progress = Callable[[Iterable], Iterable]


def initial_latents(seeds: list[int], height: int, width: int, channels: int, scale: int) -> torch.Tensor:
    """One CPU generator per prompt, so a prompt's noise does not depend on its batch or backend."""
    shape = (1, channels, height // scale, width // scale)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds])


def denoise(predict_noise: NoisePredictor, scheduler, latents: torch.Tensor, steps: int, guidance_scale: float,
            progress: Progress = lambda steps: steps) -> torch.Tensor:
    """Classifier-free guided sampling; the UNet sees the unconditional rows, then the conditional."""
    # A fresh scheduler per loop: multistep schedulers (PNDM) carry state from call to call.
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    batch = latents.shape[0]
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        timestep = torch.full((2 * batch,), int(t), dtype=torch.int64)
        # The scheduler keeps the latents on the CPU in float32; a GPU backend's prediction
        # comes back per step (64x64x4 values for SD at 512 px: negligible next to the UNet).
        unconditional, conditional = predict_noise(model_input, timestep).to("cpu", torch.float32).chunk(2)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(guided, t, latents, return_dict=False)[0]
    return latents


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in ``[0, 1]`` on any device -> uint8 on the CPU."""
    return (images.to("cpu", torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
