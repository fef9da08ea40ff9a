"""``sdrt build-engine``: export a model and build an engine set for one backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends import REGISTRY, names
from ..modes import MAX_LEVELS, ROLES
from . import options

EXAMPLE = """examples:
  sdrt build-engine --model tiny --backend onnxruntime --out engines/tiny
  sdrt build-engine --model /models/sd-v1-5 --backend tensorrt --precision fp16 \\
      --batch 1:4 --size 512:768 --levels 8 --out engines/sd15-fp16

Writes text_encoder, unet and vae_decoder graphs (and engines, for backends that compile them)
with manifest.json into --out. The set appears only when complete; an error or Ctrl-C leaves
nothing behind. Backends:
""" + "\n".join(f"  {entry.name:<12} {entry.summary}" for entry in REGISTRY if entry.builds_engines)


def add_to(commands) -> None:
    parser = commands.add_parser(
        "build-engine", help="export the model to ONNX and build an engine set",
        description="Export the structured UNet, the text encoder and the VAE decoder to ONNX, check the "
                    "graphs (TensorRT operator support, fusable cross-attention), build engines for one "
                    "backend and record everything in manifest.json.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help=f"{options.MODELS_HELP} [default: tiny]")
    parser.add_argument("--backend", choices=["auto", *names(builds_engines=True)], default="auto",
                        help="auto: the first of these that runs here: "
                             f"{', '.join(names(builds_engines=True))} [default: auto]")
    parser.add_argument("--mode", choices=ROLES, default="values",
                        help="which role the stacked levels play in the UNet; either mode also serves plain "
                             "[default: values]")
    parser.add_argument("--batch", type=options.int_range("--batch"), default=(1, 4), metavar="MIN:MAX",
                        help="prompts per call the engines accept [default: 1:4]")
    parser.add_argument("--size", type=options.int_range("--size"), metavar="MIN:MAX",
                        help="image side in pixels, multiples of 64 [default: 64:the model's size]")
    parser.add_argument("--levels", type=options.positive_int("levels", MAX_LEVELS), default=8,
                        help="most levels per prompt, the full prompt included [default: 8]")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                        help="engine precision [default: the backend's: fp16 for TensorRT, fp32 for ONNX Runtime]")
    parser.add_argument("--optimization-level", type=int, choices=range(6), default=3,
                        help="TensorRT builder optimization level [default: 3]")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="TensorRT timing cache to read and update (speeds up rebuilds)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the engine set")
    options.add_progress_options(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..backends import BuildOptions, best_engine_backend, engine_backend
    from ..contract import Profile
    from ..export.build import build_engine_set, planned_stages
    from ..model import model_facts

    backend = args.backend
    if backend == "auto":
        backend, passed_over = best_engine_backend()
        options.announce(f"backend {backend}" + (f" ({', '.join(passed_over)} not available here)"
                                                 if passed_over else ""), args)
    profile = Profile(batch=args.batch, size=args.size or (64, model_facts(args.model).default_size),
                      levels=args.levels)
    stages = options.StageBar(args, "build-engine", planned_stages(engine_backend(backend)))
    try:
        manifest = build_engine_set(args.model, backend, args.mode, profile, args.precision, args.out, stages,
                                    BuildOptions(args.optimization_level, args.timing_cache))
    finally:
        stages.done()
    print(f"wrote {backend} engines ({args.mode} mode, {manifest.precision}) to {args.out}")
