"""Writing safely: staging names, atomic renames, locks, stale leftovers, one-line OS errors, digests.

* Every file and folder we produce is first written under a **staging name** beside its target,
  ``.<name>.sdrt-<pid>-<random>.partial``, and renamed into place only when complete: a reader
  never sees half an artefact, and an error or signal leaves nothing under the final name.
* A staging entry whose process is gone (SIGKILL, power loss) is **stale**: the next write of
  the same target removes it. Folders built under a lock (engine sets, model caches) are stale
  whenever nobody holds that lock.
* A **lock file** lives only as long as the lock: it is removed before it is released.
* An ``OSError`` while writing becomes one line naming what was being written, the path, and
  what to do (``os_error_line``).
* ``file_sha256`` is the digest recorded of every file we write and check later: a model
  cache's files and an engine set's artefacts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

STAGING_MARK = ".sdrt-"
# Room for the staging prefix and suffix inside a 255-byte file name.
MAX_STAGED_NAME = 180
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.ENOENT: "a folder on the way does not exist; create it first",
    errno.EEXIST: "something else is already there",
}


def os_error_line(error: OSError, action: str, path: Path | str) -> str:
    advice = _ADVICE.get(error.errno, error.strerror or type(error).__name__)
    return f"cannot {action} {path}: {advice}"


def os_error_of(error: BaseException) -> OSError | None:
    """The OS error behind ``error``: itself, or one that a Rust-backed library (safetensors,
    tokenizers) reported as text ending in '(os error N)'."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


@contextlib.contextmanager
def reporting(action: str, path: Path | str) -> Iterator[None]:
    """Turn an OS error in the block into a one-line ``UserError``: 'cannot <action> <path>: ...'."""
    try:
        yield
    except Exception as error:
        os_error = None if isinstance(error, UserError) else os_error_of(error)
        if os_error is None:
            raise
        raise UserError(os_error_line(os_error, action, path)) from None


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staged_prefix(name: str) -> str:
    return f".{name[:MAX_STAGED_NAME]}{STAGING_MARK}"


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_entry(path: Path) -> None:
    """Remove a file or a folder tree, whichever ``path`` is (never following a link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clear_stale_staging(target: Path, any_owner: bool = False) -> list[Path]:
    """Remove staging entries of ``target`` whose process is dead (or all of them, ``any_owner``,
    when the caller holds the lock that every live writer of ``target`` would hold)."""
    removed = []
    pattern = glob.escape(staged_prefix(target.name)) + "*"
    for entry in target.parent.glob(pattern):
        match = re.match(r"(\d+)-", entry.name[len(staged_prefix(target.name)):])
        if match and (any_owner or not _owner_alive(int(match.group(1)))):
            remove_entry(entry)
            removed.append(entry)
    return removed


def staging_path(target: Path, kind: str = "file") -> Path:
    """A new, empty staging file or folder beside ``target``, readable as the umask allows."""
    prefix, suffix = f"{staged_prefix(target.name)}{os.getpid()}-", ".partial"
    if kind == "folder":
        staged = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
        os.chmod(staged, 0o777 & ~current_umask())  # mkdtemp's private 0700 would outlive the rename
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(handle)
        staged = Path(name)
        os.chmod(staged, 0o666 & ~current_umask())  # mkstemp's private 0600 would survive the rename
    return staged


@contextlib.contextmanager
def atomic_path(path: Path, what: str = "file") -> Iterator[Path]:
    """Yield a staging path beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is replaced in one rename, never when it is a folder. OS errors are one
    line naming ``what`` was being written.
    """
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder; give a file name")
    with reporting(f"write {what}", path):
        clear_stale_staging(path)
        temporary = staging_path(path)
    try:
        yield temporary
        with reporting(f"write {what}", path):
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_bytes_atomically(path: Path, data: bytes, what: str = "file") -> None:
    with atomic_path(path, what) as temporary, reporting(f"write {what}", path):
        temporary.write_bytes(data)


def check_writable_folder(path: Path, what: str = "output") -> None:
    """Fail now, before any work, if ``path`` cannot be written: a folder in its place, a missing
    or read-only folder."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; create it first or choose another path")
    refusal = _write_refusal(folder, staged_prefix(path.name))
    if refusal:
        raise UserError(f"cannot write to {what} folder {folder} ({refusal}); choose a writable folder")


def _write_refusal(folder: Path, prefix: str) -> str | None:
    """Why nothing can be written in ``folder`` (as ``_ADVICE`` says it), or None: a probe file
    is made under our staging ``prefix`` and removed at once."""
    try:
        handle, probe = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".probe", dir=folder)
    except OSError as error:
        return _ADVICE.get(error.errno, error.strerror)
    os.close(handle)
    os.unlink(probe)
    return None


def same_path(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same resolved path (other spellings, links, ``..``),
    or, when both exist, the same file (hard links)."""
    try:
        if first.resolve() == second.resolve():
            return True
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except (OSError, RuntimeError):  # a link loop, an unreadable folder: compare them as written
        return os.path.abspath(first) == os.path.abspath(second)


def refuse_shared_outputs(outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, two outputs of one command (by flag) that name the same file:
    one would overwrite the other."""
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for index, (flag, path) in enumerate(given):
        for other_flag, other in given[index + 1:]:
            if same_path(path, other):
                raise UserError(f"{flag} {path} and {other_flag} {other} name the same file, so one would "
                                "overwrite the other; give each its own path")


def check_creatable_folder(folder: Path, what: str) -> None:
    """Fail now, before any work, if ``folder`` cannot be made (or is not writable when it exists):
    something other than a folder in its place or on its way, a read-only or missing parent."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; choose a folder")
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link cannot be made into a folder
            raise UserError(f"{what} {folder}: {existing} is a broken link; choose another folder")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {what} {folder}: {existing} is a file, not a folder")
    refusal = _write_refusal(existing, f".{STAGING_MARK}")
    if refusal:
        raise UserError(f"cannot {'write to' if existing == folder else 'create'} {what} {folder} "
                        f"({refusal}); choose a writable folder")


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the block; the file goes with the lock.

    ``busy``: fail at once with this message when another process holds the lock; ``None``:
    wait for it. The file is removed before the lock is released, so a process that opened it
    meanwhile finds its lock on a removed file and tries again on a new one.
    """
    while True:
        with reporting("create the lock", lock_path):
            handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            os.close(handle)
            raise UserError(busy) from None
        try:
            still_there = os.stat(lock_path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            still_there = False
        if still_there:
            break
        os.close(handle)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(handle)


def lock_path_for(target: Path) -> Path:
    return target.parent / f".{target.name[:MAX_STAGED_NAME]}.sdrt-lock"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
