"""``sdrt eval``: binding success per mode over prompts x seeds, one JSON and a contact sheet."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from ..errors import UserError
from ..inputs import MAX_BATCH
from . import options

DEFAULT_MODES = "plain,values,keys,composable"  # ordinary SD first, as the baseline

EXAMPLE = """examples:
  sdrt eval --model shapes-clip --prompts held-out --seeds 4 --out results.json --sheet sheet.png
  sdrt eval --model /models/sd15 --prompts-file cc500.txt --seeds 2 --scorer mypackage.judges:Judge --out r.json
  sdrt eval --prompts-file prompts.txt --seeds 2 --sheet sheet.png      # no scorer: grids for people

Every prompt gets the same seeds in every mode. The JSON holds each image's outcome, the success
rate of each mode with its 95% Wilson interval, and McNemar's exact test of each mode against the
first, on the same prompts and seeds."""


def add_to(commands) -> None:
    from ..evaluation import BUILT_IN_SCORERS

    parser = commands.add_parser(
        "eval", help="measure attribute binding per mode over prompts x seeds",
        description="Generate every prompt with the same seeds in each mode, judge each image with a scorer, "
                    "and write the outcomes, per-mode rates with intervals and paired tests as JSON, and the "
                    "images as a contact sheet.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts-file", type=Path, metavar="FILE", help="one prompt per line")
    source.add_argument("--prompts", choices=["held-out", "seen", "single"],
                        help="the shapes world's own prompt sets: two-object captions with a held-out pair, "
                             "two-object captions seen in training, one-object captions")
    parser.add_argument("--limit", type=options.positive_int("limit", 100_000),
                        help="use only the first LIMIT prompts")
    parser.add_argument("--seeds", type=options.positive_int("seeds", 1000), default=4,
                        help="seeds per prompt: SEED, SEED+1, ... [default: 4]")
    parser.add_argument("--seed", type=options.seed, default=0, help="first seed [default: 0]")
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help="comma-separated modes, each optionally +magnet or +tome (a binding method: "
                             "values+magnet); the first is the baseline of the paired tests "
                             f"[default: {DEFAULT_MODES}]")
    parser.add_argument("--model", help="model folder, hub id or embedded name [default: shapes]")
    parser.add_argument("--engine", type=Path, metavar="DIR", help="run on this engine set instead")
    parser.add_argument("--scorer", default=None,
                        help=f"{', '.join(BUILT_IN_SCORERS)} or package.module:Name; 'none' writes only the sheet "
                             "[default: shapes for the shapes models, else none]")
    options.add_drawing_options(parser)
    options.add_scheduler_option(parser)
    options.add_parser_options(parser.add_argument_group(options.STRUCTURE_GROUP), with_tree=False)
    parser.add_argument("--batch-size", type=options.positive_int("batch-size", MAX_BATCH), default=8,
                        help="prompts per denoising loop [default: 8]")
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="the results JSON")
    parser.add_argument("--sheet", type=options.png_path, metavar="FILE.png",
                        help="contact sheet: a row per prompt and seed, a column per mode")
    parser.add_argument("--sheet-rows", type=options.positive_int("sheet-rows", 10_000), default=48,
                        help="at most this many rows in the sheet [default: 48]")
    options.add_progress_options(parser)
    parser.set_defaults(run=run)


def _prompts(args) -> list[str]:
    if args.prompts_file is not None:
        from .generate import read_prompts_file

        prompts = read_prompts_file(args.prompts_file)
    else:
        from ..shapes import world

        chosen = args.prompts or "held-out"
        prompts = {"held-out": world.held_out_two_object_prompts, "seen": world.seen_two_object_prompts,
                   "single": world.single_object_prompts}[chosen]()
    return prompts[:args.limit] if args.limit else prompts


def run(args) -> None:
    from ..evaluation import evaluate, load_scorer, report
    from ..files import atomic_path, check_writable_folder, refuse_shared_outputs, reporting
    from ..grids import contact_sheet
    from ..image import png_bytes
    from ..pipeline import StructuredDiffusionPipeline
    from ..shapes import MODELS as SHAPES_MODELS

    if args.out is None and args.sheet is None:
        raise UserError("give --out FILE.json for the results, --sheet FILE.png for the images, or both")
    refuse_shared_outputs({"--out": args.out, "--sheet": args.sheet})
    for path in (args.out, args.sheet):
        if path is not None:
            check_writable_folder(path)
    modes = options.modes_list(args.modes)
    seeds = options.seed_run(args.seed, args.seeds)
    model = args.model or ("shapes" if args.engine is None else None)
    scorer_name = args.scorer or ("shapes" if model in SHAPES_MODELS or args.prompts else "none")
    scorer = None if scorer_name == "none" else load_scorer(scorer_name)
    prompts = _prompts(args)
    parser = options.chosen_parser(args)
    pipe = (StructuredDiffusionPipeline.from_engines(args.engine, model=args.model) if args.engine is not None
            else StructuredDiffusionPipeline.from_pretrained(model))
    bar = options.ProgressBar(args, "eval", unit="image")
    try:
        trials, images = evaluate(pipe, prompts, seeds, modes, scorer, args.batch_size, keep_images=bool(args.sheet),
                                  on_batch=bar, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                  scheduler=args.scheduler, parser=parser)
    finally:
        bar.close()
    drawn = pipe.drawing_defaults
    context = {"model": pipe.model_id, "backend": pipe.backend, "prompts": len(prompts), "seeds": seeds,
               "steps": args.steps or drawn["num_inference_steps"],
               "guidance": drawn["guidance_scale"] if args.guidance is None else args.guidance,
               "scheduler": args.scheduler or "the model's own", "parser": parser.name}
    result = report(trials, modes, scorer, context)
    results_json = (json.dumps(result, indent=1, default=_plain) + "\n").encode()
    sheet_png = None
    if args.sheet is not None:
        keys = [(prompt, seed) for prompt in prompts for seed in seeds][:args.sheet_rows]
        outcome = {(trial.prompt, trial.seed, trial.mode): trial.outcome for trial in trials}
        rows = [[images[(prompt, seed, mode)] for mode in modes] for prompt, seed in keys]
        labels = [f"{prompt} / {seed}" for prompt, seed in keys]
        sheet = contact_sheet(rows, labels, modes, title=f"{pipe.model_id}: {', '.join(modes)}", scale=2)
        sheet_png = png_bytes(sheet, {"model": pipe.model_id, "modes": ",".join(modes),
                                      "outcomes": json.dumps({f"{p} / {s} / {m}": o
                                                              for (p, s, m), o in outcome.items() if (p, s) in keys})})
    # Both files are made in full before either is renamed into place: a failure leaves neither.
    with contextlib.ExitStack() as stack:
        for path, data, what in ((args.out, results_json, "results"), (args.sheet, sheet_png, "image")):
            if path is not None:
                staged = stack.enter_context(atomic_path(path, what))
                with reporting(f"write {what}", path):
                    staged.write_bytes(data)
    if result["summary"] is not None:
        for mode, row in result["summary"]["modes"].items():
            low, high = row["ci95"]
            print(f"{mode:<8} binding success {_rate(row['success_rate'])} (95% CI {low:.3f}-{high:.3f}, "
                  f"{row['images']} images)")
        for name, row in result["summary"]["paired"].items():
            difference = "n/a" if row["difference"] is None else f"{row['difference']:+.3f}"
            print(f"{name:<18} difference {difference}, McNemar p = {row['mcnemar_p']:.4f}")
    print(f"wrote {', '.join(str(path) for path in (args.out, args.sheet) if path is not None)}")


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.3f}"


def _plain(value):
    """JSON for what a user's scorer put in its details: numpy numbers as numbers, anything else as text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)
