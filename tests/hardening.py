"""Helpers of the hardening corpus (test_hardening_*.py): run sdrt, judge its exit, find leftovers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd_struct_rt.cli import main

SDRT = str(Path(sys.executable).with_name("sdrt"))
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--quiet"]
PROMPT = "a red car and a white sheep"


def run_sdrt(capsys, *arguments: str) -> tuple[int, str]:
    """``sdrt`` in this process: (exit status, stderr), argparse exits included."""
    code, _, stderr = sdrt_output(capsys, *arguments)
    return code, stderr


def sdrt_output(capsys, *arguments: str) -> tuple[int, str, str]:
    """``sdrt`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(arguments))
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, stderr: str, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one error line, containing every fragment."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def leftovers(*folders: Path) -> list[Path]:
    """Staging entries and lock files of ours anywhere below ``folders``."""
    return [path for folder in folders if folder.exists() for path in folder.rglob("*") if ".sdrt-" in path.name]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` with its bytes (None for folders): what 'nothing lost' compares."""
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() and not path.is_symlink() else None)
            for path in sorted(folder.rglob("*"))}


def subprocess_sdrt(*arguments: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SDRT, *arguments], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def needs_root_mounts():
    return pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                              reason="needs root to mount small tmpfs file systems")


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def copy_vocabulary_into(cache: Path) -> None:
    """Seed a fresh cache with the CLIP vocabulary, so no test needs the network for it."""
    from sd_struct_rt.vocab import VOCAB_FILE, clip_bpe_vocab

    (cache / "clip").mkdir(parents=True, exist_ok=True)
    shutil.copy(clip_bpe_vocab(), cache / "clip" / VOCAB_FILE)
