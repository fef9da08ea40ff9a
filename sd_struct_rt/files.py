"""Writing artefacts safely: a temporary name in the target folder, renamed when complete.

A reader never sees a half-written PNG, engine or ONNX file, and an interrupted run leaves
nothing behind under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_writable_folder(path: Path, what: str = "output") -> None:
    """Fail now, before any work, if a file cannot be created next to ``path``."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; create it first or choose another path")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise UserError(f"cannot write to {what} folder {folder} ({error.strerror}); "
                        "choose a writable folder") from None
    os.close(handle)
    os.unlink(probe)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's private 0600 would survive the rename
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
