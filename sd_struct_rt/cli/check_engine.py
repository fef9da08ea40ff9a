"""``sdrt check-engine``: an engine set against the torch reference (SPEC section 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from . import options


def add_to(commands) -> None:
    parser = commands.add_parser(
        "check-engine", help="compare an engine set with the torch reference",
        description="Run every engine of a set and the torch reference of its model on the same fresh "
                    "random inputs at the smallest and the largest call of the engine profile (through "
                    "Polygraphy's Comparator) and print the errors; then generate one image on both. "
                    "Float32 engines pass at relative error <= 1e-4 and image PSNR >= 35 dB, reduced "
                    "precision at cosine >= 0.999 and image PSNR >= 30 dB (SPEC 7).",
        epilog="example:\n  sdrt check-engine engines/tiny", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", type=Path, metavar="DIR", help="folder written by sdrt build-engine")
    parser.add_argument("--seed", type=options.seed, default=0, help="seed of the random inputs [default: 0]")
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..engine_check import check_engine_set

    rows, passed = check_engine_set(args.engine, args.seed)
    print(f"{'component':<13} {'rel. error':>10} {'cosine':>10}  result  shapes")
    for row in rows:
        extra = f"  (PSNR {row.psnr:.1f} dB)" if row.psnr is not None else ""
        print(f"{row.component:<13} {row.relative_error:>10.2e} {row.cosine:>10.6f}  "
              f"{'pass' if row.passed else 'FAIL':<6}  {row.shape}{extra}")
    if not passed:
        failed = sum(not row.passed for row in rows)
        raise UserError(f"{failed} of {len(rows)} comparisons failed for {args.engine}")
    print(f"{args.engine}: all {len(rows)} comparisons pass")
