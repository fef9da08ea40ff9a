"""What the commands share: the one-line argument parser, typed options, structure flags, progress."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable

from .. import inputs
from ..errors import InputError, UserError

EXIT_USER_ERROR = 2
MODELS_HELP = ("an embedded model (shapes: trained here on coloured shapes; tiny, tiny-sd2, tiny-sdxl: "
               "random weights), a diffusers-format SD 1.x, 2.x or XL folder, or a Hugging Face model id "
               "(needs network)")
PENDING_SIGNALS: list[int] = []  # SIGINT/SIGTERM received during this command


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, Kubernetes) unwinds like Ctrl-C: every clean-up runs."""


def _on_signal(signum, frame):
    # Python ignores an exception raised while it runs a weakref callback or __del__ (an import
    # lock's, say): the signal is also recorded, and every progress callback raises it again.
    PENDING_SIGNALS.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_signal_handlers() -> dict:
    """SIGTERM and SIGINT raise in the main thread (again after a library such as Ray took them
    over); returns the handlers they replace."""
    return {number: signal.signal(number, _on_signal) for number in (signal.SIGTERM, signal.SIGINT)}


def raise_pending_signal() -> None:
    """Raise a signal received earlier whose exception Python had to drop (see ``_on_signal``)."""
    if PENDING_SIGNALS:
        raise Terminated() if PENDING_SIGNALS[0] == signal.SIGTERM else KeyboardInterrupt()


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print the error and where help is."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def checked(convert: Callable[[str], object], check: Callable[[object, str], object], name: str, kind: str):
    """An argparse type: ``convert`` the text, then apply the pipeline's own ``check`` under the flag's name."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, not {text!r}") from None
        try:
            return check(value, name)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def positive_int(name: str, upper: int):
    return checked(int, lambda value, label: inputs.whole_number(value, label, 1, upper), name, "a whole number")


def steps_option(name: str = "steps"):
    return checked(int, inputs.steps, name, "a whole number")


def image_side(name: str):
    return checked(int, inputs.image_side, name, "a whole number of pixels")


guidance = checked(float, inputs.guidance, "guidance", "a number")
seed = checked(int, inputs.seed, "seed", "a whole number")


def png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"output {text!r} must end in .png")
    return path


def int_list(name: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be whole numbers separated by commas, "
                                             f"not {text!r}") from None
    return parse


def int_range(name: str):
    def parse(text: str) -> tuple[int, int]:
        low, sep, high = text.partition(":")
        try:
            return int(low), int(high if sep else low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be MIN:MAX whole numbers, not {text!r}") from None
    return parse


def modes_list(text: str, flag: str = "--modes") -> list[str]:
    """The settings of a comma-separated flag: known modes, each optionally ``+`` a binding method
    (``values+magnet``), each once (a setting twice would draw the same row twice)."""
    from ..binding import BINDINGS
    from ..modes import MODES, setting_parts

    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = [mode for mode in modes if setting_parts(mode)[0] not in MODES or mode.endswith("+")
               or setting_parts(mode)[1] not in (None, *BINDINGS)]
    if not modes or unknown:
        raise UserError(f"{flag} takes {', '.join(MODES)}, each optionally +{' or +'.join(BINDINGS)} (a binding "
                        f"method), comma-separated, not {text!r}")
    if len(set(modes)) != len(modes):
        raise UserError(f"{flag} takes distinct modes separated by commas, such as plain,values,keys; not {text!r}")
    return modes


def seed_run(first: int, count: int, count_flag: str = "--seeds") -> list[int]:
    """Seeds ``first`` .. ``first + count - 1``, refused in one line (quoting only what was given)
    when they would pass the largest seed."""
    if first + count - 1 > inputs.MAX_SEED:
        raise UserError(f"--seed {first} with {count_flag} {count} would pass 2**63-1, the largest seed "
                        f"(the seeds run from --seed upwards); lower --seed or {count_flag}")
    return [first + index for index in range(count)]


def add_drawing_options(parser: argparse.ArgumentParser) -> None:
    """``--steps`` and ``--guidance``, whose defaults come from the model in hand."""
    from ..pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS

    recorded = embedded_drawing_defaults()
    for flag, kind, field, fallback, what in (("--steps", steps_option(), "default_steps", DEFAULT_STEPS,
                                               "denoising steps"),
                                              ("--guidance", guidance, "default_guidance_scale",
                                               DEFAULT_GUIDANCE_SCALE, "classifier-free guidance scale")):
        known = "; ".join(f"{name}: {facts[field]:g}" for name, facts in recorded.items() if field in facts)
        parser.add_argument(flag, type=kind, default=None, help=f"{what} [default: the model folder's own "
                                                                 f"({known or 'none embedded'}), else {fallback:g}]")


def embedded_drawing_defaults() -> dict[str, dict]:
    """What each embedded model's folder records (``sdrt_defaults.json``), read from the package alone."""
    from pathlib import Path

    from ..families import read_drawing_defaults
    from ..model import EMBEDDED_MODELS, embedded_config_root

    return {name: read_drawing_defaults(Path(str(embedded_config_root(name)))) for name in EMBEDDED_MODELS}


STRUCTURE_GROUP = "structure (which noun phrases become levels)"


def add_structure_options(parser: argparse.ArgumentParser, with_plain: bool) -> None:
    from ..binding import BINDINGS
    from ..modes import DEFAULT_MAX_LEVELS, MAX_LEVELS, MODES

    group = parser.add_argument_group(STRUCTURE_GROUP)
    if with_plain:
        group.add_argument("--mode", choices=MODES, default="values",
                           help="values: full-prompt keys, phrase levels averaged as values (the paper's "
                                "default); keys: one key set per level (the paper's --conjunction); "
                                "plain: ordinary Stable Diffusion; composable: Composable Diffusion over the "
                                "phrases, one UNet row each plus the full prompt [default: values]")
        group.add_argument("--max-levels", type=positive_int("max-levels", MAX_LEVELS), default=DEFAULT_MAX_LEVELS,
                           help="levels per prompt including the full prompt; extra phrases are dropped "
                                f"with a warning [default: {DEFAULT_MAX_LEVELS}]")
        group.add_argument("--binding", choices=list(BINDINGS),
                           help="a text-side binding method on the parse's attribute-object pairs, with any "
                                "--mode and no extra UNet cost: magnet (Magnet's binding vectors) or tome "
                                "(ToMe's token merging and end-token substitution) [default: none]")
    add_parser_options(group, with_tree=True)


def add_parser_options(group, with_tree: bool) -> None:
    """``--parser`` and ``--spacy-model``; ``with_tree`` adds the tree parser's ``--tree`` and ``--phrase``,
    which only make sense for one prompt."""
    from ..structure.parsers import DEFAULT_SPACY_MODEL, NAMED_PARSERS, PARSERS

    group.add_argument("--parser", choices=PARSERS if with_tree else NAMED_PARSERS,
                       help="spacy: constituency-style trees, offline (the default); stanza: the paper's "
                            "constituency parser (needs its English models); scene-graph: the paper's second "
                            "variant, entities and one phrase per relation (subject to object)"
                            + ("; tree: your --tree/--phrase [default: tree if --tree or --phrase is given, "
                               "else spacy]" if with_tree else " [default: spacy]"))
    if with_tree:
        group.add_argument("--tree", action="append", default=[], metavar="BRACKETED",
                           help="a Penn-style tree of one sentence, e.g. '(ROOT (NP (DT a) (NN cat)))'; "
                                "repeat for each sentence")
        group.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                           help="a phrase of the prompt to use as a level; repeatable")
    group.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL,
                       help="installed spaCy pipeline for --parser spacy and --parser scene-graph "
                            f"[default: {DEFAULT_SPACY_MODEL}]")


def chosen_parser(args):
    """The parser the structure flags ask for, refusing flags that do not go together."""
    from ..structure.parsers import make_parser

    trees, phrases = getattr(args, "tree", []), getattr(args, "phrase", [])
    name = args.parser or ("tree" if trees or phrases else "spacy")
    if name != "tree" and (trees or phrases):
        raise UserError(f"--tree and --phrase go with --parser tree, not --parser {name}")
    return make_parser(name, trees, phrases, args.spacy_model)


def add_scheduler_option(parser: argparse.ArgumentParser) -> None:
    from ..schedulers import SCHEDULERS

    parser.add_argument("--scheduler", choices=list(SCHEDULERS),
                        help="sampler, from diffusers, configured like the model folder's own; dpm++2m at 20-25 "
                             "steps gives what pndm gives at 50 [default: the model folder's, pndm for SD 1.x]")


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no status lines")
    parser.add_argument("--progress", action="store_true",
                        help="progress bars even when stderr is not a terminal (a log file, a CI job)")


def shows_progress(args) -> bool:
    """Bars only on a terminal, unless asked for; never with --quiet."""
    return not args.quiet and (args.progress or sys.stderr.isatty())


class ProgressBar:
    """A ``progress(done, total)`` callback drawing one bar on stderr, created at the first call."""

    def __init__(self, args, description: str, unit: str = "step"):
        self.enabled, self.description, self.unit = shows_progress(args), description, unit
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        raise_pending_signal()
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StageBar:
    """Named stages of a long job as a bar: a stage counts as done when the next one starts, so
    the bar never runs ahead. Call it with each stage's name; ``done()`` when all are."""

    def __init__(self, args, description: str, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit="stage", file=sys.stderr, leave=False,
                        disable=not shows_progress(args))
        self.started = False

    def __call__(self, name: str) -> None:
        raise_pending_signal()
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def done(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def announce(message: str, args=None) -> None:
    """One status line on stderr (stdout stays what a script reads); none with --quiet."""
    if args is None or not getattr(args, "quiet", False):
        print(f"sdrt: {message}", file=sys.stderr)
