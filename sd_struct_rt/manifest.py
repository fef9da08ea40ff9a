"""The manifest of an engine set: what was built, from what, for which shapes.

``engines/<name>/manifest.json`` is written last, after every artefact it names is complete,
so a folder with a manifest is a finished build. Loading compares it with the request and
refuses a mismatch in one line that says what differs and how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .contract import ModelFacts, Profile
from .errors import UserError

MANIFEST_NAME = "manifest.json"
# 2: the model's facts (family, text width, sizes) replace the SD 1.x-only model_config.
FORMAT_VERSION = 2


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        profile = data.pop("profile")
        data["profile"] = Profile(tuple(profile["batch"]), tuple(profile["size"]), int(profile["levels"]))
        data["model_facts"] = ModelFacts(**data["model_facts"])
        return cls(**data)


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise UserError(f"engine folder {folder} does not exist; build one with: sdrt build-engine --out {folder}")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST_NAME}: not a finished engine set; "
                        f"rebuild with: sdrt build-engine --out {folder}")
    text = path.read_text()
    try:
        version = json.loads(text).get("format_version")
    except (ValueError, AttributeError):
        version = None
    if version is not None and version != FORMAT_VERSION:
        raise UserError(f"{path} has format {version}, this sdrt reads {FORMAT_VERSION}; "
                        f"rebuild with: sdrt build-engine --out {folder}")
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"rebuild with: sdrt build-engine --out {folder}") from None


def rebuild_command(manifest: Manifest, folder: Path, **changes) -> str:
    """The build-engine command that reproduces ``manifest``, with ``changes`` applied."""
    profile = manifest.profile
    options = {"model": manifest.model_id, "backend": manifest.backend, "mode": manifest.mode,
               "precision": manifest.precision, "batch": f"{profile.batch[0]}:{profile.batch[1]}",
               "size": f"{profile.size[0]}:{profile.size[1]}", "levels": profile.levels, **changes}
    return "sdrt build-engine " + " ".join(f"--{key} {value}" for key, value in options.items()) + f" --out {folder}"


def expect(manifest: Manifest, folder: Path, **wanted: str) -> None:
    """Refuse the engine set if any manifest field differs from what the caller needs."""
    differences = [f"{key} is {getattr(manifest, key)!r}, not {value!r}"
                   for key, value in wanted.items() if getattr(manifest, key) != value]
    if differences:
        raise UserError(f"engine set {folder} does not match: {'; '.join(differences)}; "
                        f"rebuild with: {rebuild_command(manifest, folder, **wanted)}")


def verify_files(manifest: Manifest, folder: Path) -> None:
    """Every artefact exists and has the hash recorded at build time (no corrupt engines)."""
    for name, digest in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing; rebuild with: {rebuild_command(manifest, folder)}")
        if file_sha256(path) != digest:
            raise UserError(f"{path} is corrupt or was changed after the build (hash mismatch); "
                            f"rebuild with: {rebuild_command(manifest, folder)}")
