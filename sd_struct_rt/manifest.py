"""The manifest of an engine set: what was built, from what, for which shapes.

``engines/<name>/manifest.json`` is written last, after every artefact it names is complete,
so a folder with a manifest is a finished build. Reading it validates it against one schema
(``Manifest`` and its nested dataclasses, checked by pydantic for types, then ``_problems`` for
what types cannot say: known backend and mode, profile ranges, safe file names). Every refusal
is one line naming the field or file and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from . import __version__, inputs
from .contract import ModelFacts, Profile
from .errors import InputError, UserError
from .modes import ROLES
from .files import STAGING_MARK, file_sha256, os_error_line

MANIFEST_NAME = "manifest.json"
# 2: the model's facts (family, text width, sizes) replace the SD 1.x-only model_config.
# 3: the UNet's timestep is float32 (exact fractional timesteps), no longer int64.
FORMAT_VERSION = 3
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Manifest:
    model_id: str
    weights_sha256: str
    mode: str
    backend: str
    backend_version: str
    precision: str
    profile: Profile
    exporter: str
    opset: int
    onnx_sha256: dict[str, str]  # component -> sha256 of its ONNX graph file
    engine_files: dict[str, str]  # component -> file the backend loads
    files: dict[str, str]  # every artefact of the set (engines, graphs, external data) -> sha256
    model_facts: ModelFacts
    device: dict[str, str] = field(default_factory=dict)  # name, compute_capability (TensorRT)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def digest(self) -> str:
        """A short fingerprint of the whole set: its manifest names every file by hash."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _schema():
    from pydantic import ConfigDict, TypeAdapter

    # Strict types and no unknown keys, in the manifest and everything nested in it.
    for kind in (Manifest, Profile, ModelFacts):
        kind.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)
    return TypeAdapter(Manifest)


def _problems(manifest: Manifest) -> list[str]:
    """What a well-typed manifest can still get wrong, each naming its field."""
    from .backends import engine_backend, names
    from .families import COMPONENTS, FAMILY_MODULES

    problems = []
    engine_names = names(builds_engines=True)
    if manifest.mode not in ROLES:
        problems.append(f"field mode is {manifest.mode!r}, not {' or '.join(ROLES)}")
    if manifest.backend not in engine_names:
        problems.append(f"field backend is {manifest.backend!r}, not one of {', '.join(engine_names)}")
    elif manifest.precision not in engine_backend(manifest.backend).precisions:
        problems.append(f"field precision is {manifest.precision!r}, which {manifest.backend} does not build")
    if manifest.model_facts.family not in FAMILY_MODULES:
        problems.append(f"field model_facts.family is {manifest.model_facts.family!r}, an unknown family")
    facts = manifest.model_facts
    for name in ("text_width", "vocab_size", "vae_scale_factor", "default_size", "size_step", "latent_channels",
                 "tokens"):
        if getattr(facts, name) < 1:
            problems.append(f"field model_facts.{name} must be positive, not {getattr(facts, name)}")
    for name, check in (("default_steps", inputs.steps), ("default_guidance_scale", inputs.guidance)):
        if getattr(facts, name) is not None:
            try:  # the rule a caller's own value meets
                check(getattr(facts, name), f"field model_facts.{name}")
            except InputError as error:
                problems.append(str(error))
    if facts.size_step >= 1:
        try:
            manifest.profile.require_size_step(facts.size_step)
        except InputError as error:
            problems.append(f"field profile: {error}")
    for name, digests in (("files", manifest.files), ("onnx_sha256", manifest.onnx_sha256)):
        bad = [key for key, digest in digests.items() if not _SHA256.fullmatch(digest)]
        if bad:
            problems.append(f"field {name}.{bad[0]} is not a sha256 digest")
    if not _SHA256.fullmatch(manifest.weights_sha256):
        problems.append("field weights_sha256 is not a sha256 digest")
    unsafe = [name for name in manifest.files if not _is_plain_relative(name)]
    if unsafe:
        problems.append(f"field files names {unsafe[0]!r}, which is not a path inside the set")
    for name in ("engine_files", "onnx_sha256"):
        if set(getattr(manifest, name)) != set(COMPONENTS):
            problems.append(f"field {name} must name exactly {', '.join(COMPONENTS)}")
    unlisted = [name for name in manifest.engine_files.values() if name not in manifest.files]
    if unlisted:
        problems.append(f"field engine_files names {unlisted[0]!r}, which field files does not list")
    for needed in ("scheduler/scheduler_config.json", "tokenizer/vocab.json"):
        if needed not in manifest.files:
            problems.append(f"field files does not list {needed}, which the runtime reads")
    return problems


def _is_plain_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name \
        and name == str(path) and name != MANIFEST_NAME


class OutdatedManifest(UserError):
    """A manifest sdrt wrote in an older format: refused, but its set may be rebuilt in place."""

    def __init__(self, message: str, file_names: list[str]):
        super().__init__(message)
        self.file_names = file_names


def _outdated(data: dict, path: Path) -> OutdatedManifest:
    """The refusal of an older set, with the command that rebuilds it from what its manifest says."""
    folder = path.parent
    files = data.get("files")
    names = [name for name in files if isinstance(name, str)] if isinstance(files, dict) else []
    options = {key: data[key] for key in ("model_id", "backend", "mode", "precision") if isinstance(data.get(key), str)}
    profile = data.get("profile") if isinstance(data.get("profile"), dict) else {}
    for key in ("batch", "size"):
        value = profile.get(key)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(side, int) for side in value):
            options[key] = f"{value[0]}:{value[1]}"
    if isinstance(profile.get("levels"), int):
        options["levels"] = profile["levels"]
    options["out"] = folder
    command = "sdrt build-engine " + " ".join(f"--{key.removesuffix('_id')} {shlex.quote(str(value))}"
                                              for key, value in options.items())
    return OutdatedManifest(f"{path} has format {data.get('format_version')}, this sdrt reads {FORMAT_VERSION}; "
                            f"rebuild with: {command}", names)


def parse_manifest(text: str, path: Path) -> Manifest:
    """The manifest in ``text``, or one ``UserError`` line naming the first field that is wrong."""
    from pydantic import ValidationError

    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise _outdated(data, path)
    try:
        manifest = _schema().validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = first["msg"][0].lower() + first["msg"][1:]
        field_name = f"field {where}" if where else "its content"
        raise UserError(f"{path} is not a valid manifest ({field_name}: {problem}); "
                        f"{_start_over(path.parent)}") from None
    problems = _problems(manifest)
    if problems:
        raise UserError(f"{path} is not a valid manifest ({problems[0]}); {_start_over(path.parent)}")
    return manifest


def _start_over(folder: Path) -> str:
    # A set whose manifest cannot be trusted cannot be replaced by sdrt either (we would not
    # know which files are ours), so the advice is to remove it first.
    quoted = shlex.quote(str(folder))
    return f"delete {quoted} and build it again with: sdrt build-engine --out {quoted}"


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        if folder.exists():
            raise UserError(f"engine set {folder} is a file, not a folder; give the folder sdrt build-engine wrote")
        raise UserError(f"engine folder {folder} does not exist; build one with: sdrt build-engine --out "
                        f"{shlex.quote(str(folder))}")
    if not path.is_file():
        if path.exists():
            raise UserError(f"{path} is not a regular file; {_start_over(folder)}")
        raise UserError(f"{folder} has no {MANIFEST_NAME}: not a finished engine set; build one with: "
                        f"sdrt build-engine --out {shlex.quote(str(folder))}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {_start_over(folder)}") from None
    except OSError as error:
        raise UserError(os_error_line(error, "read", path)) from None
    return parse_manifest(text, path)


def rebuild_command(manifest: Manifest, folder: Path, **changes) -> str:
    """The build-engine command that reproduces ``manifest`` with ``changes``, into ``folder``."""
    profile = manifest.profile
    options = {"model": manifest.model_id, "backend": manifest.backend, "mode": manifest.mode,
               "precision": manifest.precision, "batch": f"{profile.batch[0]}:{profile.batch[1]}",
               "size": f"{profile.size[0]}:{profile.size[1]}", "levels": profile.levels, **changes,
               "out": folder}
    return "sdrt build-engine " + " ".join(f"--{key} {shlex.quote(str(value))}" for key, value in options.items())


def sibling_folder(folder: Path, tag: str) -> Path:
    """A folder beside ``folder`` for a set of another kind, so the working set stays as it is."""
    return folder.with_name(f"{folder.name}-{re.sub(r'[^A-Za-z0-9._-]+', '-', tag).strip('-') or 'other'}")


def expect(manifest: Manifest, folder: Path, **wanted: str) -> None:
    """Refuse the set if a manifest field differs from what the caller needs; suggest building
    the set that fits beside it, never over it."""
    differences = {key: value for key, value in wanted.items() if getattr(manifest, key) != value}
    if differences:
        described = "; ".join(f"{key} is {getattr(manifest, key)!r}, not {value!r}"
                              for key, value in differences.items())
        options = {key.removesuffix("_id"): value for key, value in differences.items()}
        beside = sibling_folder(folder, "-".join(Path(str(value)).name for value in differences.values()))
        raise UserError(f"engine set {folder} does not match: {described}; build one beside it with: "
                        f"{rebuild_command(manifest, beside, **options)}")


def verify_files(manifest: Manifest, folder: Path) -> None:
    """Every artefact is a regular file with the hash recorded at build time."""
    for name, digest in manifest.files.items():
        path = folder / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise UserError(f"{path} is missing; rebuild with: {rebuild_command(manifest, folder)}") from None
        except OSError as error:
            raise UserError(os_error_line(error, "read", path)) from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "a device or pipe"
            raise UserError(f"{path} is {kind}, not the file the build wrote; delete it and rebuild with: "
                            f"{rebuild_command(manifest, folder)}")
        try:
            actual = file_sha256(path)
        except OSError as error:
            raise UserError(os_error_line(error, "read", path)) from None
        if actual != digest:
            raise UserError(f"{path} is corrupt or was changed after the build (hash mismatch); "
                            f"rebuild with: {rebuild_command(manifest, folder)}")


def foreign_entries(file_names: list[str], folder: Path) -> list[str]:
    """Entries of ``folder`` that a manifest listing ``file_names`` does not name (nor our staging)."""
    named = set(file_names) | {MANIFEST_NAME}
    parents = {str(parent) for name in file_names for parent in PurePosixPath(name).parents if str(parent) != "."}
    foreign = []
    for root, folders, files in os.walk(folder):  # links are entries, never followed
        for name in sorted(folders + files):
            entry = Path(root) / name
            relative = entry.relative_to(folder).as_posix()
            if relative in named or STAGING_MARK in name:
                continue
            if relative in parents and entry.is_dir() and not entry.is_symlink():
                continue
            foreign.append(relative)
    return sorted(foreign)
