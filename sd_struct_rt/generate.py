"""One generation request end to end: prompt -> structure -> conditioning -> loop -> PNG."""

from __future__ import annotations

import json
import re

import torch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .backends import TextEncoder, UNet, VAEDecoder
from .errors import UserError
from .conditioning import DEFAULT_MAX_LEVELS, build_conditioning
from .image import save_png
from .pipeline import SamplingSettings, decode, denoise, initial_latents
from .structure.spans import StructuredPrompt
from .text import CONTENT_TOKENS, preprocess


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


def render(prompts: list[StructuredPrompt], negative_prompts: list[str], seeds: list[int], backends: Backends,
           tokenizer, scheduler, vae_scale_factor: int, settings: SamplingSettings, mode: str,
           max_levels: int = DEFAULT_MAX_LEVELS, progress: Callable = lambda steps: steps) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 images of a batch of analysed prompts, in one denoising loop."""
    conditioning = build_conditioning(backends.text_encoder, tokenizer, prompts, negative_prompts, mode, max_levels)
    latents = initial_latents(seeds, settings.height, settings.width, vae_scale_factor)
    return decode(backends.vae, denoise(backends.unet, scheduler, conditioning, latents, settings, progress))


def generate_batch(jobs: list[Job], backends: Backends, tokenizer, scheduler, vae_scale_factor: int,
                   settings: SamplingSettings, info: RunInfo,
                   max_levels: int = DEFAULT_MAX_LEVELS, progress: Callable = lambda steps: steps) -> None:
    """Generate and save one PNG per job in one batched denoising loop."""
    images = render([job.prompt for job in jobs], [job.negative_prompt for job in jobs],
                    [job.seed for job in jobs], backends, tokenizer, scheduler, vae_scale_factor, settings,
                    info.mode, max_levels, progress)
    for job, image in zip(jobs, images):
        save_png(image, job.out, png_metadata(job, settings, info, backends.name))


def read_prompts_file(path: Path) -> list[str]:
    """Prompts, one per line; an empty line is refused rather than silently skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read prompts file {path} ({error})") from None
    if not lines:
        raise UserError(f"prompts file {path} is empty; write one prompt per line")
    for number, line in enumerate(lines, start=1):
        if not preprocess(line):
            raise UserError(f"{path} line {number} is empty; write one prompt per line, no blank lines")
    return lines


def check_prompt_length(tokenizer, prompt: str, where: str) -> None:
    """Refuse a prompt CLIP would truncate: in a batch file that is almost always a mistake."""
    count = len(tokenizer(preprocess(prompt), add_special_tokens=False).input_ids)
    if count > CONTENT_TOKENS:
        raise UserError(f"{where} has {count} tokens but CLIP reads {CONTENT_TOKENS}; shorten it")


def output_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", preprocess(prompt)).strip("-")[:60] or "prompt"
    return f"{index:04d}-{slug}.png"
