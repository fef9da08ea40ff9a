"""``sdrt generate``: prompts in, PNGs out, through ``StructuredDiffusionPipeline``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..backends import names
from ..errors import InputError, UserError
from ..inputs import MAX_BATCH
from . import options

EXAMPLE = """example:
  sdrt generate "a red car and a white sheep" --seed 7 --out car-sheep.png
  sdrt generate "a red car and a white sheep" --model /models/stable-diffusion-v1-5 --steps 50
  sdrt generate --prompts-file prompts.txt --batch-size 4 --out-dir images/

The embedded model 'tiny' has random weights: it shows that the pipeline works, not pictures.
Same prompt, settings and seed give the same image, bit for bit, on the same backend."""
# The pipeline's parameters whose refusals this command says under its own flags' names.
FLAGS = {"attention_downsampling": "--attention-downsampling"}


def add_to(commands) -> None:
    parser = commands.add_parser(
        "generate", help="generate an image from a prompt",
        description="Generate an image with Stable Diffusion and write it as a PNG whose text "
                    "metadata records everything needed to reproduce it.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="what to draw (or use --prompts-file)")
    parser.add_argument("--model",
                        help=f"{options.MODELS_HELP}; with --engine, the model the engines must have "
                             "been built from [default: tiny]")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from [default: none]")
    options.add_drawing_options(parser)
    options.add_scheduler_option(parser)
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the initial noise [default: 0]")
    parser.add_argument("--width", type=options.image_side("width"),
                        help="image width in pixels, a multiple of 8 [default: the model's, 256 for tiny]")
    parser.add_argument("--height", type=options.image_side("height"),
                        help="image height in pixels, a multiple of 8 [default: the model's]")
    parser.add_argument("--out", type=options.png_path, default=Path("sdrt.png"),
                        help="PNG file to write [default: sdrt.png]")
    parser.add_argument("--engine", type=Path, metavar="DIR",
                        help="run on a built engine set (sdrt build-engine) instead of the torch model")
    parser.add_argument("--backend", choices=["auto", *names()], default="auto",
                        help="auto: the engine set's backend with --engine, the torch reference without "
                             "[default: auto]")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="with TensorRT engines: replay each engine's run from a CUDA graph, which "
                             "removes the per-kernel launch cost")
    batch = parser.add_argument_group("many prompts")
    batch.add_argument("--prompts-file", type=Path, metavar="FILE",
                       help="one prompt per line; prompt i (from 0) gets seed SEED+i whatever the batch size")
    batch.add_argument("--batch-size", type=options.positive_int("batch-size", MAX_BATCH), default=1,
                       help="prompts per denoising loop; rows may hold different numbers of levels [default: 1]")
    batch.add_argument("--out-dir", type=Path, metavar="DIR",
                       help="folder for the PNGs of --prompts-file, named NNNN-prompt.png")
    parser.add_argument("--attention-maps", type=Path, metavar="DIR",
                        help="also write where each token and phrase looked (cross-attention over all steps and "
                             "the layers --attention-downsampling picks, all by default) as heatmaps on the image, "
                             "with an index JSON; torch reference only")
    parser.add_argument("--attention-downsampling", type=options.int_list("attention-downsampling"),
                        metavar="F[,F]",
                        help="with --attention-maps: average only the cross-attention layers whose grid is the "
                             "latent grid shrunk F times (SD 1.x has 1,2,4,8; the shapes model 2,4). Coarse "
                             "grids blur small objects' maps [default: every layer]")
    options.add_structure_options(parser, with_plain=True)
    options.add_progress_options(parser)
    parser.set_defaults(run=run)


def read_prompts_file(path: Path) -> list[str]:
    """Prompts, one per line, each checked as the pipeline checks a prompt; an empty line is
    refused rather than silently skipped."""
    import warnings

    from .. import inputs
    from ..files import os_error_line

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise UserError(f"prompts file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise UserError(os_error_line(error, "read prompts file", path)) from None
    if text.startswith("\ufeff"):
        warnings.warn(f"prompts file {path} starts with a byte-order mark; it was ignored", inputs.InputWarning)
        text = text[1:]
    lines = text.splitlines()
    if not lines:
        raise UserError(f"prompts file {path} is empty; write one prompt per line")
    for number, line in enumerate(lines, start=1):
        lines[number - 1] = inputs.prompt(line, f"{path} line {number}", "write one prompt per line, no blank lines")
    return lines


def output_name(index: int, prompt: str) -> str:
    from ..text import preprocess

    slug = re.sub(r"[^a-z0-9]+", "-", preprocess(prompt)).strip("-")[:60] or "prompt"
    return f"{index:04d}-{slug}.png"


def _targets(args) -> list[tuple[str, int, Path]]:
    """(prompt, seed, output path) of every image asked for, checked before any model loads."""
    from .. import inputs
    from ..files import check_writable_folder

    if args.prompts_file is None:
        if args.prompt is None:
            raise UserError("give a prompt, or --prompts-file FILE with one prompt per line")
        if args.out_dir is not None:
            raise UserError("--out-dir goes with --prompts-file; for one prompt use --out FILE.png")
        prompt = inputs.prompt(args.prompt, "the prompt")
        check_writable_folder(args.out)
        return [(prompt, args.seed, args.out)]
    if args.prompt is not None:
        raise UserError("give either a prompt or --prompts-file, not both")
    if args.out_dir is None:
        raise UserError("--prompts-file needs --out-dir DIR for its images")
    prompts = read_prompts_file(args.prompts_file)
    if args.seed + len(prompts) - 1 > inputs.MAX_SEED:
        raise UserError(f"--seed {args.seed} leaves no room for {len(prompts)} prompts (line i gets seed + i - 1)")
    paths = [args.out_dir / output_name(i, prompt) for i, prompt in enumerate(prompts)]
    if args.out_dir.exists():
        for path in paths:  # a folder in an image's place is refused now, not after the images before it
            if path.is_dir():
                raise UserError(f"--out-dir {path} is a folder; give a file name")
        check_writable_folder(paths[0], "--out-dir")
    return [(prompt, args.seed + i, path) for i, (prompt, path) in enumerate(zip(prompts, paths))]


def open_pipeline(args):
    """The pipeline ``--engine``, ``--backend`` and ``--model`` ask for."""
    from ..pipeline import StructuredDiffusionPipeline

    if args.engine is None:
        if args.backend not in ("auto", "torch"):
            raise UserError(f"--backend {args.backend} runs compiled engines: build them with "
                            f"'sdrt build-engine --backend {args.backend} --out DIR' and pass --engine DIR")
        if args.cuda_graphs:
            raise UserError("--cuda-graphs goes with --engine DIR of TensorRT engines")
        return StructuredDiffusionPipeline.from_pretrained(args.model or "tiny")
    if args.backend == "torch":
        raise UserError("--engine runs compiled engines; drop --engine to use the torch reference")
    return StructuredDiffusionPipeline.from_engines(args.engine, model=args.model,
                                                    backend=None if args.backend == "auto" else args.backend,
                                                    cuda_graphs=args.cuda_graphs)


def run(args) -> None:
    from ..files import reporting
    from ..modes import MODES

    if args.attention_downsampling is not None and args.attention_maps is None:
        raise UserError("--attention-downsampling goes with --attention-maps DIR")
    targets = _targets(args)
    if args.attention_maps is not None:  # refused now, not after the first image is written
        from ..files import check_creatable_folder, refuse_shared_outputs

        if args.out_dir is None:  # maps beside the images of --out-dir are fine, not in place of --out
            refuse_shared_outputs({"--out": args.out, "--attention-maps": args.attention_maps})
        check_creatable_folder(args.attention_maps, "--attention-maps")
    parser = options.chosen_parser(args) if MODES[args.mode].uses_structure or args.binding else None
    created = None
    if args.out_dir is not None and not args.out_dir.exists():
        with reporting("create --out-dir", args.out_dir):
            args.out_dir.mkdir(parents=True)
        created = args.out_dir
    maps_created = args.attention_maps if args.attention_maps is not None and not args.attention_maps.exists() \
        else None
    try:
        _generate(args, targets, parser)
    finally:
        for folder in (created, maps_created):
            if folder is not None and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # made for this run, which wrote nothing into it


def _generate(args, targets: list[tuple[str, int, Path]], parser) -> None:
    from ..attention_maps import write_attention_maps
    from ..files import atomic_path, reporting
    from ..text import content_tokens, token_count

    pipe = open_pipeline(args)
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
                  width=args.width, height=args.height, mode=args.mode, parser=parser, max_levels=args.max_levels,
                  scheduler=args.scheduler, attention_maps=args.attention_maps is not None,
                  attention_downsampling=args.attention_downsampling, binding=args.binding)
    prompts, seeds, outs = (list(column) for column in zip(*targets))
    batches = [slice(start, start + args.batch_size) for start in range(0, len(targets), args.batch_size)]
    # Every batch (the last may be smaller) is checked before the first image is made.
    try:
        requests = [pipe.check_inputs(prompts[batch], seed=seeds[batch], **common) for batch in batches]
    except InputError as error:  # said under the flag's name where it is one of ours
        raise UserError(error.named(FLAGS.get(error.parameter, error.parameter))) from None
    if args.prompts_file is not None:
        # CLIP would truncate these silently; in a file of prompts that is almost always a mistake.
        limit = content_tokens(pipe.tokenizer)
        for line, prompt in enumerate(prompts, start=1):
            if (count := token_count(pipe.tokenizer, prompt)) > limit:
                raise UserError(f"{args.prompts_file} line {line} has {count} tokens but CLIP reads {limit}; "
                                "shorten it")
    # Every prompt parsed before the first image, so that what it warns of comes first.
    structured = [pipe.structure(request) for request in requests]
    options.announce(f"backend {pipe.backend}", args)  # every input checked by now
    for number, (batch, request) in enumerate(zip(batches, requests), start=1):
        bar = options.ProgressBar(args, "denoising" if len(batches) == 1 else f"batch {number}/{len(batches)}")
        try:
            result = pipe.generate(pipe.prepare(request, bar, structured[number - 1]))
        finally:
            bar.close()
        for index, out in enumerate(outs[batch]):
            if args.attention_maps is None:
                result.save(index, out)
                continue
            # The image and its maps are all or nothing: the image is staged until its maps are
            # written, so a failure leaves neither (and a file already at --out as it was).
            with atomic_path(out, "image") as staged, reporting("write image", out):
                staged.write_bytes(result.png(index))
                write_attention_maps(args.attention_maps, out.stem, result.images[index], result.attention[index],
                                     result.attention_downsampling)
    print(f"wrote {outs[0] if len(outs) == 1 else f'{len(outs)} images in {args.out_dir}'}")
