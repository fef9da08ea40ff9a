"""``sdrt bench``: per-stage latency, throughput against batch size, and A/B ratios.

Every ratio comes from one interleaved run (``benchmark.interleaved``): plain vs structured
on the same engine, structured vs the official per-level loop, backend vs backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .benchmark import interleaved, machine_description, ratio
from .runtime import Runtime


@dataclass
class BenchSettings:
    levels: int = 4
    steps: int = 10
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    warmup: int = 3
    rounds: int = 15
    prompt: str = "a red car and a white sheep on a green hill"


def _unet_inputs(runtime: Runtime, levels: int, side: int, generator: torch.Generator):
    """One prompt with classifier-free guidance: two rows, ``levels`` random levels."""
    latent, width = side // runtime.vae_scale_factor, runtime.text_width
    return (torch.randn(2, 4, latent, latent, generator=generator), torch.full((2,), 500),
            torch.randn(2, 77, width, generator=generator),
            torch.randn(2, levels, 77, width, generator=generator), torch.ones(2, levels))


def _render(runtime: Runtime, prompts: list, sampling) -> torch.Tensor:
    from .generate import render

    return render(prompts, [""] * len(prompts), list(range(len(prompts))), runtime.backends, runtime.tokenizer,
                  runtime.scheduler, runtime.vae_scale_factor, sampling, "values")


def stage_latencies(runtime: Runtime, parser, settings: BenchSettings, side: int) -> dict[str, dict]:
    """Median latency of each pipeline stage for one prompt, and of the whole generation."""
    from .conditioning import build_conditioning
    from .pipeline import SamplingSettings, decode, initial_latents
    from .structure import analyse

    structured = analyse(settings.prompt, parser, runtime.tokenizer)
    sampling = SamplingSettings(steps=settings.steps, width=side, height=side)
    conditioning = build_conditioning(runtime.backends.text_encoder, runtime.tokenizer, [structured], [""],
                                      "values")
    latents = initial_latents([0], side, side, runtime.vae_scale_factor)
    model_input = torch.cat([latents, latents])
    candidates = {
        "parse": lambda: analyse(settings.prompt, parser, runtime.tokenizer),
        "text_encode": lambda: build_conditioning(runtime.backends.text_encoder, runtime.tokenizer,
                                                  [structured], [""], "values"),
        "unet_step": lambda: runtime.backends.unet(model_input, torch.full((2,), 500),
                                                   conditioning.encoder_hidden_states, conditioning.level_states,
                                                   conditioning.level_mask),
        "vae": lambda: decode(runtime.backends.vae, latents),
    }
    timings = interleaved(candidates, warmup=settings.warmup, rounds=settings.rounds)
    result = {name: timing.as_dict() for name, timing in timings.items()}
    end = interleaved({"end_to_end": lambda: _render(runtime, [analyse(settings.prompt, parser, runtime.tokenizer)],
                                                     sampling)},
                      warmup=1, rounds=max(3, settings.rounds // 5))
    result["end_to_end"] = end["end_to_end"].as_dict() | {"steps": settings.steps, "levels": len(structured.spans) + 1}
    return result


def throughput(runtime: Runtime, parser, settings: BenchSettings, side: int) -> list[dict]:
    """Images per second of whole generations against the batch size."""
    from .pipeline import SamplingSettings
    from .structure import analyse

    sampling = SamplingSettings(steps=settings.steps, width=side, height=side)
    limit = runtime.manifest.profile.batch[1] if runtime.manifest else max(settings.batch_sizes)
    structured = analyse(settings.prompt, parser, runtime.tokenizer)
    rows = []
    for batch in [size for size in settings.batch_sizes if size <= limit]:
        timing = interleaved({"run": lambda: _render(runtime, [structured] * batch, sampling)},
                             warmup=1, rounds=3)["run"]
        rows.append({"batch": batch, "images_per_second": round(batch / (timing.median_ms / 1e3), 3),
                     "median_ms": round(timing.median_ms, 1)})
    return rows


def run_bench(model_ref: str, backend: str, engine: Path | None, settings: BenchSettings, parser) -> dict:
    """The whole benchmark as one JSON-ready object."""
    import copy

    from .baselines import LevelLoopUNet
    from .benchmark import cached_engine_set
    from .model import load_model
    from .runtime import engine_runtime, torch_runtime

    generator = torch.Generator().manual_seed(0)
    reference = torch_runtime(model_ref, "values")
    if backend == "torch":
        runtime, keys_runtime = reference, torch_runtime(model_ref, "keys")
    else:
        runtime = engine_runtime(engine or cached_engine_set(model_ref, backend, "values"), "values")
        keys_runtime = engine_runtime(cached_engine_set(model_ref, backend, "keys"), "keys") if engine is None else None
    side = runtime.default_size
    sample, timestep, context, stacked, mask = _unet_inputs(runtime, settings.levels, side, generator)
    unet = runtime.backends.unet
    candidates = {
        "plain": lambda: unet(sample, timestep, context, context[:, None], torch.ones(2, 1)),
        "structured": lambda: unet(sample, timestep, context, stacked, mask),
    }
    if keys_runtime is not None:
        candidates["keys"] = lambda: keys_runtime.backends.unet(sample, timestep, context, stacked, mask)
    if backend != "torch":
        candidates["torch_structured"] = lambda: reference.backends.unet(sample, timestep, context, stacked, mask)
    naive = LevelLoopUNet(copy.deepcopy(load_model(model_ref).unet), "values")

    def naive_call():
        with torch.inference_mode():
            naive(sample, timestep, context, stacked, mask)

    candidates["naive_torch"] = naive_call
    timings = interleaved(candidates, warmup=settings.warmup, rounds=settings.rounds)
    ratios = {"structured_over_plain": ratio(timings, "structured", "plain")}
    if "keys" in timings:
        ratios["keys_over_plain"] = ratio(timings, "keys", "plain")
    if backend == "torch":
        ratios["naive_over_structured"] = ratio(timings, "naive_torch", "structured")
    else:
        ratios[f"{backend}_speedup_over_torch"] = ratio(timings, "torch_structured", "structured")
        ratios["naive_torch_over_structured"] = ratio(timings, "naive_torch", "structured")
    return {
        "model": model_ref,
        "backend": runtime.backends.name,
        "image_size": side,
        "levels": settings.levels,
        "machine": machine_description(),
        "unet_call": {name: timing.as_dict() for name, timing in timings.items()},
        "ratios": {name: round(value, 4) for name, value in ratios.items()},
        "stages": stage_latencies(runtime, parser, settings, side),
        "throughput": throughput(runtime, parser, settings, side),
        "date": time.strftime("%Y-%m-%d"),
    }
