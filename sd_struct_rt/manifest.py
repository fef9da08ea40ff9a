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
from .errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
SIZE_STEP = 64  # pixels: 8 for the VAE times 8 for the UNet's three downsamplings


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Profile:
    """The shapes an engine set accepts: images per prompt batch, pixel sizes, levels."""

    batch: tuple[int, int] = (1, 4)  # prompts per call; the UNet sees twice as many rows
    size: tuple[int, int] = (64, 512)  # image side in pixels, both width and height
    levels: int = 8  # at most, the full prompt included

    def __post_init__(self):
        low, high = self.batch
        if not 1 <= low <= high:
            raise UserError(f"batch range {low}:{high} is empty; give MIN:MAX with 1 <= MIN <= MAX")
        low, high = self.size
        # The UNet halves the latent three times; a traced graph needs it to divide evenly.
        if not (SIZE_STEP <= low <= high and low % SIZE_STEP == 0 and high % SIZE_STEP == 0):
            raise UserError(f"size range {low}:{high} must be multiples of {SIZE_STEP} with MIN <= MAX")
        if self.levels < 1:
            raise UserError(f"--levels must be at least 1, not {self.levels}")

    def widened(self, batch: int, width: int, height: int) -> dict[str, str]:
        """build-engine options whose ranges cover this profile and the request."""
        sides = (width, height, *self.size)
        low_side = max(SIZE_STEP, min(sides) // SIZE_STEP * SIZE_STEP)
        high_side = -(-max(sides) // SIZE_STEP) * SIZE_STEP
        return {"batch": f"{min(batch, self.batch[0])}:{max(batch, self.batch[1])}",
                "size": f"{low_side}:{high_side}"}

    def check(self, batch: int, width: int, height: int, levels: int, rebuild: str) -> None:
        """Refuse, before anything runs, a request the engine was not built for."""
        problems = []
        if not self.batch[0] <= batch <= self.batch[1]:
            problems.append(f"batch {batch} is outside the engine's {self.batch[0]}..{self.batch[1]}")
        for name, side in (("width", width), ("height", height)):
            if not self.size[0] <= side <= self.size[1]:
                problems.append(f"{name} {side} is outside the engine's {self.size[0]}..{self.size[1]}")
            elif side % SIZE_STEP:
                problems.append(f"{name} {side} is not a multiple of {SIZE_STEP}, which engines need")
        if levels > self.levels:
            problems.append(f"{levels} levels exceed the engine's {self.levels}")
        if problems:
            raise UserError(f"{'; '.join(problems)}; rebuild with: {rebuild}")


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
    model_config: dict[str, int] = field(default_factory=dict)  # vae_scale_factor, default_size, text_width
    device: dict[str, str] = field(default_factory=dict)  # name, compute_capability (TensorRT)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["profile"] = {"batch": list(self.profile.batch), "size": list(self.profile.size),
                           "levels": self.profile.levels}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        profile = data.pop("profile")
        data["profile"] = Profile(tuple(profile["batch"]), tuple(profile["size"]), int(profile["levels"]))
        return cls(**data)


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise UserError(f"engine folder {folder} does not exist; build one with: sdrt build-engine --out {folder}")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST_NAME}: not a finished engine set; "
                        f"rebuild with: sdrt build-engine --out {folder}")
    try:
        manifest = Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"rebuild with: sdrt build-engine --out {folder}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise UserError(f"{path} has format {manifest.format_version}, this sdrt reads {FORMAT_VERSION}; "
                        f"rebuild with: sdrt build-engine --out {folder}")
    return manifest


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
