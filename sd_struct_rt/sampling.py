"""The denoising loop around any backend's UNet: initial latents -> guided sampling -> pixels."""

from __future__ import annotations

from typing import Callable

import torch

from .errors import UserError

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents [2B,...], timesteps [2B]) -> noise
Progress = Callable[[int, int], None]  # (steps done, steps asked for)


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per prompt, so a prompt's noise depends neither on its batch nor its backend."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def initial_latents(generators: list[torch.Generator], height: int, width: int, channels: int,
                    scale: int) -> torch.Tensor:
    shape = (1, channels, height // scale, width // scale)
    return torch.cat([torch.randn(shape, generator=generator) for generator in generators])


def denoise(predict_noise: NoisePredictor, scheduler, latents: torch.Tensor, steps: int, guidance_scale: float,
            progress: Progress | None = None, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Classifier-free guided sampling; the UNet sees the unconditional rows, then the conditional.

    ``scheduler`` is used up (multistep schedulers keep state): pass a fresh one per loop.
    Samplers that add noise (ancestral ones) draw it from ``generators``, the prompts' own, which
    drew the initial latents: a seed still gives the same bytes. Latents that stop being finite
    (a huge guidance scale, an engine that overflows) end the loop with one line naming the
    step, instead of a black or noisy image.
    """
    from .schedulers import draws_noise

    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    batch, timesteps, done = latents.shape[0], scheduler.timesteps, 0
    noise = {"generator": generators} if generators is not None and draws_noise(scheduler) else {}
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        # float32 per row, exactly as the scheduler gives it: Euler's and Karras' are fractional.
        timestep = torch.full((2 * batch,), float(t), dtype=torch.float32)
        # The scheduler keeps the latents on the CPU in float32; a GPU backend's prediction
        # comes back per step (64x64x4 values for SD at 512 px: negligible next to the UNet).
        unconditional, conditional = predict_noise(model_input, timestep).to("cpu", torch.float32).chunk(2)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(guided, t, latents, return_dict=False, **noise)[0]
        # Some schedulers visit a timestep twice (PNDM's warm-up, second-order solvers); one of
        # the caller's steps ends when the timestep moves on.
        if index + 1 == len(timesteps) or timesteps[index + 1] != t:
            done = min(done + 1, steps)
            if not torch.isfinite(latents).all():
                raise UserError(f"the latents stopped being finite at step {done} of {steps} (guidance scale "
                                f"{guidance_scale:g}; a scale above about 30 rarely helps); no image was made")
            if progress is not None:
                progress(done, steps)
    return latents


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in ``[0, 1]`` on any device -> uint8 on the CPU."""
    return (images.to("cpu", torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
