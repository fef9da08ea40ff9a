"""The denoising loop around any backend's UNet: initial latents -> guided sampling -> pixels."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import InputError, UserError

Progress = Callable[[int, int], None]  # (steps done, steps asked for)


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per prompt, so a prompt's noise depends neither on its batch nor its backend."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def initial_latents(generators: list[torch.Generator], height: int, width: int, channels: int,
                    scale: int) -> torch.Tensor:
    shape = (1, channels, height // scale, width // scale)
    return torch.cat([torch.randn(shape, generator=generator) for generator in generators])


class DenoisingRun:
    """The sampling state of one batch of prompts: its own scheduler, latents, timestep and step count.

    Classifier-free guidance: ``model_input`` gives the UNet rows, the unconditional ones, then
    the conditional; ``advance`` takes the UNet's prediction for exactly those rows. With
    ``conditional_rows`` (composable mode: prompt ``i`` has that many conditional rows) the
    guidance sums over them: ``eps_u + w * sum_j (eps_j - eps_u)`` (SPEC 3.6). Runs are
    independent, so a server can put the rows of many runs, at different timesteps, into one
    UNet call (in-flight batching).

    ``scheduler`` is used up (multistep schedulers keep state): one per run, its own. Samplers
    that add noise (ancestral ones) draw it from ``generators``, the prompts' own, which drew
    the initial latents: a seed still gives the same bytes. Latents that stop being finite (a
    huge guidance scale, an engine that overflows) end the run with one line naming the step.
    """

    def __init__(self, scheduler, latents: torch.Tensor, steps: int, guidance_scale: float,
                 generators: list[torch.Generator] | None = None, progress: Progress | None = None,
                 conditional_rows: Sequence[int] | None = None):
        from .schedulers import draws_noise

        if progress is not None and not callable(progress):
            raise InputError(f"progress must be a function progress(done, total) or None, not "
                             f"{type(progress).__name__}")
        if conditional_rows is not None and len(conditional_rows) != latents.shape[0]:
            raise ValueError(f"{len(conditional_rows)} conditional row counts for {latents.shape[0]} prompts")
        # Each conditional row's prompt; None while there is one each (the usual two rows per prompt).
        self.owners = None if conditional_rows is None or set(conditional_rows) == {1} else \
            torch.repeat_interleave(torch.arange(latents.shape[0]), torch.tensor(list(conditional_rows)))
        scheduler.set_timesteps(steps)
        self.scheduler, self.steps, self.guidance_scale, self.progress = scheduler, steps, guidance_scale, progress
        self.latents = latents * scheduler.init_noise_sigma
        self.timesteps, self.index, self.steps_done = scheduler.timesteps, 0, 0
        self.noise = {"generator": generators} if generators is not None and draws_noise(scheduler) else {}

    @property
    def finished(self) -> bool:
        return self.index == len(self.timesteps)

    @property
    def rows(self) -> int:
        return self.latents.shape[0] + (self.latents.shape[0] if self.owners is None else len(self.owners))

    def model_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's sample rows and their timesteps: float32 per row, exactly as the scheduler
        gives them (Euler's and Karras' are fractional)."""
        t = self.timesteps[self.index]
        conditional = self.latents if self.owners is None else self.latents[self.owners]
        sample = self.scheduler.scale_model_input(torch.cat([self.latents, conditional]), t)
        return sample, torch.full((self.rows,), float(t), dtype=torch.float32)

    def advance(self, noise: torch.Tensor) -> None:
        """One scheduler step from the UNet's prediction for ``model_input``'s rows."""
        t = self.timesteps[self.index]
        # The scheduler keeps the latents on the CPU in float32; a GPU backend's prediction
        # comes back per step (64x64x4 values for SD at 512 px: negligible next to the UNet).
        noise = noise.to("cpu", torch.float32)
        unconditional, conditional = noise[:self.latents.shape[0]], noise[self.latents.shape[0]:]
        if self.owners is None:
            guided = unconditional + self.guidance_scale * (conditional - unconditional)
        else:
            directions = torch.zeros_like(unconditional).index_add_(0, self.owners,
                                                                    conditional - unconditional[self.owners])
            guided = unconditional + self.guidance_scale * directions
        self.latents = self.scheduler.step(guided, t, self.latents, return_dict=False, **self.noise)[0]
        self.index += 1
        # Some schedulers visit a timestep twice (PNDM's warm-up, second-order solvers); one of
        # the caller's steps ends when the timestep moves on.
        if self.finished or self.timesteps[self.index] != t:
            self.steps_done = min(self.steps_done + 1, self.steps)
            if not torch.isfinite(self.latents).all():
                raise UserError(f"the latents stopped being finite at step {self.steps_done} of {self.steps} "
                                f"(guidance scale {self.guidance_scale:g}; a scale above about 30 rarely helps); "
                                "no image was made")
            if self.progress is not None:
                self.progress(self.steps_done, self.steps)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images in ``[0, 1]`` on any device -> uint8 on the CPU."""
    return (images.to("cpu", torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
