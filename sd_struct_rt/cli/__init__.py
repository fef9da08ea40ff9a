"""``sdrt``: the command line, a thin layer over ``StructuredDiffusionPipeline``.

One module per command (``add_to`` registers it, ``run`` executes it); ``options`` holds what
they share. Every user-facing failure is one line and a non-zero exit.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

from .. import __version__
from ..errors import UserError
from ..files import os_error_line
from . import bench, build_engine, check_engine, compare, evaluate, generate, options, parse, serve

EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
COMMANDS = (generate, compare, evaluate, parse, build_engine, check_engine, bench, serve)




def build_parser() -> options.OneLineParser:
    parser = options.OneLineParser(
        prog="sdrt",
        description="Structured Diffusion Guidance (Feng et al., ICLR 2023) for Stable Diffusion: "
                    "noun phrases of the prompt bind their attributes to the right objects.",
        epilog="Run 'sdrt COMMAND --help' for a command's options and an example.")
    parser.add_argument("--version", action="version", version=f"sd-struct-rt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=options.OneLineParser)
    for command in COMMANDS:
        command.add_to(commands)
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

        for library in (diffusers_logging, transformers_logging):
            library.disable_progress_bar()
            # also when the library was imported before the variables above were set
            library.set_verbosity_error()
    except ImportError:
        pass


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"sdrt: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    warnings.showwarning = _one_line_warning
    options.PENDING_SIGNALS.clear()
    previous = options.install_signal_handlers()
    try:
        args.run(args)
        options.raise_pending_signal()  # one that arrived where Python could not raise it
    except UserError as error:
        print(f"sdrt: error: {error}", file=sys.stderr)
        return options.EXIT_USER_ERROR
    except KeyboardInterrupt as interruption:
        terminated = isinstance(interruption, options.Terminated)
        print(f"sdrt: {'terminated' if terminated else 'interrupted'}; no partly written file was left behind",
              file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except OSError as error:
        # The last resort: a write we did not wrap ourselves still ends in one line.
        print(f"sdrt: error: {os_error_line(error, 'use', error.filename or 'a file')}", file=sys.stderr)
        return options.EXIT_USER_ERROR
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
