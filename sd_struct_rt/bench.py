"""``sdrt bench``: per-stage latency, throughput against batch size, and A/B ratios.

Every ratio comes from one interleaved run (``timing.interleaved``): plain vs structured on the
same engine, structured vs the official per-level loop, backend vs backend. Inputs come from
the UNet's contract, so every backend is fed exactly what it declares.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .conditioning import Conditioning
from .pipeline import StructuredDiffusionPipeline
from .timing import interleaved, machine_description, ratio


Building = Callable[[str, str], Any]  # (backend, mode) -> a stage callback with done()


@dataclass
class BenchSettings:
    levels: int = 4
    steps: int = 10
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    warmup: int = 3
    rounds: int = 15
    prompt: str = "a red car and a white sheep on a green hill"
    scheduler: str | None = None  # the model's own


def cached_engine_set(model_ref: str, backend: str, mode: str, building: Building | None = None,
                      levels: int = 1) -> Path:
    """An engine set for ``model_ref`` in the cache, built on first use (benchmarks need one), whose
    profile takes at least ``levels`` levels.

    ``building(backend, mode)`` is told when a build starts and returns its stage callback, which
    gets ``done()`` at the end (a progress bar)."""
    from . import __version__
    from .contract import Profile
    from .errors import UserError
    from .export.build import build_engine_set
    from .files import reporting
    from .manifest import read_manifest, verify_files
    from .model import model_facts, resolve_model_folder
    from .paths import cache_dir

    key = hashlib.sha256(f"{resolve_model_folder(model_ref).resolve()}|{__version__}".encode()).hexdigest()[:12]
    levels = max(levels, Profile.levels)
    folder = cache_dir() / "engines" / f"{key}-{backend}-{mode}-{levels}-levels"
    try:
        verify_files(read_manifest(folder), folder)
    except UserError:
        with reporting("write the engine cache", folder.parent):
            folder.parent.mkdir(parents=True, exist_ok=True)
        stage = building(backend, mode) if building else None
        try:
            build_engine_set(model_ref, backend, mode,
                             Profile(size=(64, model_facts(model_ref).default_size), levels=levels), None, folder,
                             stage or (lambda name: None))
        finally:
            if stage is not None:
                stage.done()
    return folder


def unet_call(pipe: StructuredDiffusionPipeline, levels: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """One prompt with classifier-free guidance at the model's size: two rows, ``levels`` real levels each."""
    facts = pipe.facts
    side = pipe.default_size // facts.vae_scale_factor
    context = torch.randn(2, facts.tokens, facts.text_width, generator=generator)
    pooled = torch.randn(2, facts.pooled_width, generator=generator) if facts.pooled_width else None
    return (torch.randn(2, facts.latent_channels, side, side, generator=generator), torch.full((2,), 500.0),
            Conditioning(context, torch.randn(2, levels, facts.tokens, facts.text_width, generator=generator),
                         torch.ones(2, levels), pooled))


def stage_latencies(pipe: StructuredDiffusionPipeline, parser, settings: BenchSettings) -> dict[str, dict]:
    """Median latency of each pipeline stage for one prompt, and of the whole generation."""
    side = pipe.default_size
    request = pipe.check_inputs(settings.prompt, num_inference_steps=settings.steps, width=side, height=side,
                                parser=parser, scheduler=settings.scheduler)
    prepared = pipe.prepare(request)
    model_input = prepared.run.model_input()
    candidates = {
        "parse": lambda: pipe.structure(request),
        "text_encode": lambda: pipe.condition(prepared.structured, request),
        "unet_step": lambda: pipe.predict_noise(*model_input, prepared.conditioning, request.role),
        "vae": lambda: pipe.decode(prepared.run.latents),
    }
    timings = interleaved(candidates, warmup=settings.warmup, rounds=settings.rounds)
    result = {name: timing.as_dict() for name, timing in timings.items()}
    end = interleaved({"end_to_end": lambda: pipe(settings.prompt, num_inference_steps=settings.steps, width=side,
                                                  height=side, parser=parser, scheduler=settings.scheduler)},
                      warmup=1, rounds=max(3, settings.rounds // 5))
    result["end_to_end"] = end["end_to_end"].as_dict() | {"steps": settings.steps,
                                                          "levels": len(prepared.structured[0].spans) + 1}
    return result


def throughput(pipe: StructuredDiffusionPipeline, parser, settings: BenchSettings) -> list[dict]:
    """Images per second of whole generations against the batch size."""
    side = pipe.default_size
    limit = pipe.engine_set.manifest.profile.batch[1] if pipe.engine_set else max(settings.batch_sizes)
    structured = pipe.structure(pipe.check_inputs(settings.prompt, parser=parser))[0]
    rows = []
    for batch in [size for size in settings.batch_sizes if size <= limit]:
        def run(batch=batch):
            pipe([structured] * batch, num_inference_steps=settings.steps, width=side, height=side, parser=parser,
                 scheduler=settings.scheduler)
        timing = interleaved({"run": run}, warmup=1, rounds=3)["run"]
        rows.append({"batch": batch, "images_per_second": round(batch / (timing.median_ms / 1e3), 3),
                     "median_ms": round(timing.median_ms, 1)})
    return rows


def run_bench(model_ref: str, backend: str, engine: Path | None, settings: BenchSettings, parser,
              building: Building | None = None) -> dict:
    """The whole benchmark as one JSON-ready object; ``building`` as for ``cached_engine_set``."""
    from .level_loop import LevelLoopUNet
    from .model import load_model

    generator = torch.Generator().manual_seed(0)
    # Engines first: a damaged or mismatched set is refused before any model loads.
    if backend != "torch":
        pipe = (StructuredDiffusionPipeline.from_engines(engine, model=model_ref) if engine is not None else
                StructuredDiffusionPipeline.from_engines(cached_engine_set(model_ref, backend, "values", building,
                                                                           settings.levels)))
        keys_pipe = (StructuredDiffusionPipeline.from_engines(cached_engine_set(model_ref, backend, "keys", building,
                                                                                settings.levels))
                     if engine is None else None)
    reference = StructuredDiffusionPipeline.from_pretrained(model_ref)
    if backend == "torch":
        pipe, keys_pipe = reference, reference
    sample, timestep, conditioning = unet_call(pipe, settings.levels, generator)
    plain = Conditioning(conditioning.encoder_hidden_states, conditioning.encoder_hidden_states[:, None],
                         torch.ones(2, 1), conditioning.pooled)  # one level, the full prompt: plain SD (SPEC P1)
    candidates = {
        "plain": lambda: pipe.predict_noise(sample, timestep, plain, "values"),
        "structured": lambda: pipe.predict_noise(sample, timestep, conditioning, "values"),
    }
    if keys_pipe is not None:
        candidates["keys"] = lambda: keys_pipe.predict_noise(sample, timestep, conditioning, "keys")
    if backend != "torch":
        candidates["torch_structured"] = lambda: reference.predict_noise(sample, timestep, conditioning, "values")
    # The official loop over the same weights, loaded apart (it installs its own processors), fed
    # exactly what the reference's UNet is fed.
    reference_unet = reference.networks.unets["values"]
    naive = LevelLoopUNet(load_model(model_ref).unet, "values", reference.family.added_conditions).to(
        reference_unet.device, reference_unet.dtype)
    naive_inputs = list(reference.family.unet_inputs(sample, timestep, conditioning, "values",
                                                     reference.facts).values())

    def naive_call():
        with torch.inference_mode():
            naive(*naive_inputs)

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
        "backend": pipe.backend,
        "image_size": pipe.default_size,
        "levels": settings.levels,
        "scheduler": settings.scheduler or "the model's own",
        "parser": parser.name,
        "machine": machine_description(),
        "unet_call": {name: timing.as_dict() for name, timing in timings.items()},
        "ratios": {name: round(value, 4) for name, value in ratios.items()},
        "stages": stage_latencies(pipe, parser, settings),
        "throughput": throughput(pipe, parser, settings),
        "date": time.strftime("%Y-%m-%d"),
    }
