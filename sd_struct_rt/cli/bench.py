"""``sdrt bench``: latency per stage, throughput against batch size, and the cost of structure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backends import names
from ..errors import UserError
from ..modes import MAX_LEVELS
from . import options

EXAMPLE = """examples:
  sdrt bench --model tiny --backend onnxruntime --json
  sdrt bench --engine engines/sd15-fp16 --levels 4 --out benchmarks/results/sd15.json

Ratios are medians of per-round ratios from one interleaved run: structured_over_plain is
one UNet call in values mode with 4 levels over the same engine with one level."""


def add_to(commands) -> None:
    parser = commands.add_parser(
        "bench", help="measure latency, throughput and the cost of structure",
        description="Time every stage, images per second against batch size, and A/B ratios (plain vs "
                    "structured vs keys vs the official per-level loop, backend vs torch) with warm-up "
                    "and interleaved rounds.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model to measure [default: tiny, or the one --engine was built from]")
    parser.add_argument("--backend", choices=["auto", *names()], default="auto",
                        help="auto: the best engine backend here; engines are built into the cache on "
                             "first use unless --engine is given [default: auto]")
    parser.add_argument("--engine", type=Path, metavar="DIR", help="measure this engine set")
    parser.add_argument("--levels", type=options.positive_int("levels", MAX_LEVELS), default=4,
                        help="levels of the structured UNet call [default: 4]")
    parser.add_argument("--steps", type=options.steps_option(), default=10,
                        help="denoising steps of the end-to-end runs [default: 10]")
    options.add_scheduler_option(parser)
    options.add_parser_options(parser, with_tree=False)
    parser.add_argument("--rounds", type=options.positive_int("rounds", 1000), default=15,
                        help="interleaved rounds after warm-up [default: 15]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON object here")
    options.add_progress_options(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..backends import best_engine_backend, engine_backend
    from ..bench import BenchSettings, run_bench
    from ..export.build import planned_stages
    from ..files import check_writable_folder, write_bytes_atomically

    if args.out is not None:
        check_writable_folder(args.out)
    if args.engine is not None:
        from ..manifest import read_manifest

        manifest = read_manifest(args.engine)  # a damaged set is refused here, before any model loads
        backend, model = manifest.backend, args.model or manifest.model_id
        if args.backend not in ("auto", backend):
            raise UserError(f"{args.engine} holds {backend} engines, not {args.backend}; drop --backend")
    else:
        backend = best_engine_backend()[0] if args.backend == "auto" else args.backend
        model = args.model or "tiny"

    def building(backend: str, mode: str):
        options.announce(f"building {backend} engines ({mode} mode) for bench into the cache; only the first "
                         "run does this", args)
        return options.StageBar(args, f"engines ({mode})", planned_stages(engine_backend(backend)))

    settings = BenchSettings(levels=args.levels, steps=args.steps, rounds=args.rounds, scheduler=args.scheduler)
    result = run_bench(model, backend, args.engine, settings, options.chosen_parser(args), building)
    if args.out is not None:
        write_bytes_atomically(args.out, (json.dumps(result, indent=2) + "\n").encode(), "benchmark results")
    if args.json:
        print(json.dumps(result))
        return
    print(f"backend {result['backend']}, {result['image_size']}px, {result['levels']} levels")
    for name, timing in result["unet_call"].items():
        print(f"  UNet call {name:<18} {timing['median_ms']:>9.2f} ms  (p25-p75 {timing['p25_ms']:.2f}-"
              f"{timing['p75_ms']:.2f})")
    for name, timing in result["stages"].items():
        print(f"  stage {name:<22} {timing['median_ms']:>9.2f} ms")
    for row in result["throughput"]:
        print(f"  batch {row['batch']:<3} {row['images_per_second']:>8.3f} images/s")
    for name, value in result["ratios"].items():
        print(f"  {name:<32} {value:.3f}")
