"""``sdrt compare``: one prompt in several modes and seeds, side by side in a labelled grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options
from .evaluate import DEFAULT_MODES

EXAMPLE = """examples:
  sdrt compare "a red car and a white sheep" --modes plain,values,keys --seeds 4 --out grid.png
  sdrt compare "a red circle and a blue square" --model shapes --seeds 8 --scale 3 --out shapes.png

Rows are modes, columns are seeds; every mode gets the same seeds, so a column shows what
structure changes for the same starting noise."""


def add_to(commands) -> None:
    from ..modes import MODES

    parser = commands.add_parser(
        "compare", help="the same prompt and seeds in several modes, in one labelled grid",
        description="Generate one prompt with the same seeds in several modes (plain SD, values, keys) "
                    "and write them as one labelled grid PNG, for people to judge.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help=f"comma-separated modes of {', '.join(MODES)}, one row each; mode+magnet or "
                             f"mode+tome adds a binding method [default: {DEFAULT_MODES}]")
    parser.add_argument("--seeds", type=options.positive_int("seeds", 64), default=4,
                        help="columns: seeds SEED, SEED+1, ... [default: 4]")
    parser.add_argument("--seed", type=options.seed, default=0, help="first seed [default: 0]")
    parser.add_argument("--model", help="model folder, hub id or embedded name [default: tiny]")
    parser.add_argument("--engine", type=Path, metavar="DIR", help="run on this engine set instead")
    options.add_drawing_options(parser)
    parser.add_argument("--width", type=options.image_side("width"), help="[default: the model's]")
    parser.add_argument("--height", type=options.image_side("height"), help="[default: the model's]")
    options.add_scheduler_option(parser)
    options.add_structure_options(parser, with_plain=False)
    parser.add_argument("--scale", type=options.positive_int("scale", 16), default=1,
                        help="enlarge each image this many times in the grid (for small models) [default: 1]")
    parser.add_argument("--out", type=options.png_path, default=Path("compare.png"),
                        help="grid PNG to write [default: compare.png]")
    options.add_progress_options(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from .. import inputs
    from ..modes import setting_parts
    from ..files import check_writable_folder
    from ..grids import contact_sheet
    from ..image import save_png
    from ..pipeline import StructuredDiffusionPipeline

    modes = options.modes_list(args.modes)
    seeds = options.seed_run(args.seed, args.seeds)
    prompt = inputs.text(args.prompt, "the prompt")
    check_writable_folder(args.out)
    parser = options.chosen_parser(args)
    if args.engine is not None:
        pipe = StructuredDiffusionPipeline.from_engines(args.engine, model=args.model)
    else:
        pipe = StructuredDiffusionPipeline.from_pretrained(args.model or "tiny")
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.width,
                  height=args.height, scheduler=args.scheduler, parser=parser)
    requests = [pipe.check_inputs([prompt] * len(seeds), seed=seeds, mode=setting_parts(mode)[0],
                                  binding=setting_parts(mode)[1], **common) for mode in modes]
    options.announce(f"backend {pipe.backend}", args)
    rows = []
    for mode, request in zip(modes, requests):
        bar = options.ProgressBar(args, f"{mode}")
        try:
            rows.append(pipe.generate(pipe.prepare(request, bar)).images)
        finally:
            bar.close()
    sheet = contact_sheet(rows, modes, [f"seed {seed}" for seed in seeds], title=prompt, scale=args.scale)
    save_png(sheet, args.out, {"prompt": prompt, "modes": ",".join(modes), "seeds": ",".join(map(str, seeds)),
                               "model": pipe.model_id, "backend": pipe.backend, "parser": parser.name})
    print(f"wrote {args.out}")
