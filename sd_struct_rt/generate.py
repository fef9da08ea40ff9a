"""One generation request end to end: prompt -> structure -> conditioning -> loop -> PNG."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .backends import TextEncoder, UNet, VAEDecoder
from .conditioning import DEFAULT_MAX_LEVELS, build_conditioning
from .image import save_png
from .pipeline import SamplingSettings, decode, denoise, initial_latents
from .structure.spans import StructuredPrompt


@dataclass
class Backends:
    name: str
    text_encoder: TextEncoder
    unet: UNet
    vae: VAEDecoder


@dataclass(frozen=True)
class Job:
    prompt: StructuredPrompt
    seed: int
    out: Path
    negative_prompt: str = ""


@dataclass
class RunInfo:
    """What goes into every PNG besides the job's own fields."""

    model_id: str
    scheduler: str
    mode: str
    parser: str
    extra: dict[str, str] = field(default_factory=dict)


def png_metadata(job: Job, settings: SamplingSettings, info: RunInfo, backend: str) -> dict[str, str]:
    return {
        "prompt": job.prompt.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": str(job.seed),
        "steps": str(settings.steps),
        "guidance": str(settings.guidance),
        "scheduler": info.scheduler,
        "size": f"{settings.width}x{settings.height}",
        "model": info.model_id,
        "backend": backend,
        "mode": info.mode,
        "parser": info.parser,
        "phrases": json.dumps([{"text": s.text, "span": [s.start, s.end]} for s in job.prompt.spans]),
        "sd_struct_rt_version": __version__,
        **info.extra,
    }


def generate_batch(jobs: list[Job], backends: Backends, tokenizer, scheduler, vae_scale_factor: int,
                   settings: SamplingSettings, info: RunInfo,
                   max_levels: int = DEFAULT_MAX_LEVELS, progress: Callable = lambda steps: steps) -> None:
    """Generate and save one PNG per job in one batched denoising loop."""
    conditioning = build_conditioning(backends.text_encoder, tokenizer, [job.prompt for job in jobs],
                                      [job.negative_prompt for job in jobs], info.mode, max_levels)
    latents = initial_latents([job.seed for job in jobs], settings.height, settings.width,
                              vae_scale_factor)
    latents = denoise(backends.unet, scheduler, conditioning, latents, settings, progress)
    images = decode(backends.vae, latents)
    for job, image in zip(jobs, images):
        save_png(image, job.out, png_metadata(job, settings, info, backends.name))
