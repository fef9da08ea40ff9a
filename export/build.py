"""``sdrt build-engine``: model -> ONNX graphs -> engines -> manifest, all or nothing.

Everything is built in a staging folder beside the destination and swapped in by rename
once the manifest (written last) is complete, so neither an error nor Ctrl-C can leave a
half-written engine set. A lock on the destination keeps two builds from racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from sd_struct_rt import __version__
from sd_struct_rt.errors import UserError
from sd_struct_rt.files import current_umask
from sd_struct_rt.manifest import COMPONENTS, MANIFEST_NAME, Manifest, Profile, file_sha256

BACKENDS = ("onnxruntime", "tensorrt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")
Stage = Callable[[str], None]  # announces the next stage to the user


@contextlib.contextmanager
def folder_lock(destination: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock on ``destination``; a second build fails at once."""
    lock_path = destination.parent / f".{destination.name}.lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another build is writing {destination} right now; wait for it to finish "
                            "or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def weights_sha256(folder: Path) -> str:
    """One digest over every weight file of a model folder, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _check_replaceable(destination: Path) -> None:
    """Only an engine set (or an empty folder) may be replaced: never the user's other files."""
    if destination.exists() and (not destination.is_dir() or (any(destination.iterdir())
                                                              and not (destination / MANIFEST_NAME).is_file())):
        raise UserError(f"{destination} exists and is not an engine set; choose another --out")


def _swap_into_place(staging: Path, destination: Path) -> None:
    _check_replaceable(destination)
    if destination.exists():
        retired = destination.with_name(f".{destination.name}.replaced-{os.getpid()}")
        os.rename(destination, retired)
        try:
            os.rename(staging, destination)
        except BaseException:
            os.rename(retired, destination)  # the old set stays usable
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, destination)


def _copy_runtime_files(model_folder: Path, staging: Path) -> None:
    # The runtime over engines needs no model folder: it reads tokenizer and scheduler here.
    shutil.copytree(model_folder / "tokenizer", staging / "tokenizer")
    (staging / "scheduler").mkdir()
    shutil.copy2(model_folder / "scheduler" / "scheduler_config.json", staging / "scheduler")


def build_engine_set(model_ref: str, backend: str, mode: str, profile: Profile, precision: str,
                     destination: Path, stage: Stage = lambda name: None,
                     optimization_level: int = 3, timing_cache: Path | None = None) -> Manifest:
    """Build the three engines of ``model_ref`` for ``backend`` into ``destination``."""
    from sd_struct_rt.model import load_model

    from .onnx_export import OPSET, EXPORTER, export_text_encoder, export_unet, export_vae_decoder

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and precision != "fp32":
        raise UserError("ONNX Runtime engines are float32; use --precision fp32 or --backend tensorrt")
    device: dict[str, str] = {}
    if backend == "tensorrt":
        from .tensorrt_build import device_description, require_cuda, require_tensorrt

        trt = require_tensorrt()
        require_cuda()
        device = device_description()
    if not destination.parent.is_dir():
        raise UserError(f"folder {destination.parent} does not exist; create it or choose another --out")
    _check_replaceable(destination)
    with folder_lock(destination):
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".building",
                                        dir=destination.parent))
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's private 0700 would outlive the rename
        try:
            stage("loading the model")
            model = load_model(model_ref)
            graphs = {}
            stage("exporting the text encoder to ONNX")
            graphs["text_encoder"] = export_text_encoder(model, staging)
            stage(f"exporting the UNet ({mode} mode) to ONNX")
            graphs["unet"] = export_unet(model, mode, staging)
            stage("exporting the VAE decoder to ONNX")
            graphs["vae_decoder"] = export_vae_decoder(model, staging)
            engine_files = {component: graphs[component].name for component in COMPONENTS}
            backend_version = _onnxruntime_version() if backend == "onnxruntime" else trt.__version__
            text_width = model.text_encoder.config.hidden_size
            if backend == "tensorrt":
                from .tensorrt_build import build_engine, engine_shapes

                shapes = engine_shapes(profile, mode, text_width, opt_size=model.default_size)
                for component in COMPONENTS:
                    stage(f"building the TensorRT {component} engine ({precision})")
                    plan = staging / f"{component}.plan"
                    build_engine(graphs[component], plan, shapes[component], precision,
                                 optimization_level, timing_cache)
                    engine_files[component] = plan.name
            stage("writing the manifest")
            _copy_runtime_files(model.folder, staging)
            files = {str(p.relative_to(staging)): file_sha256(p)
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            manifest = Manifest(
                model_id=model.model_id, weights_sha256=weights_sha256(model.folder), mode=mode,
                backend=backend, backend_version=backend_version, precision=precision, profile=profile,
                exporter=EXPORTER, opset=OPSET,
                onnx_sha256={component: files[graphs[component].name] for component in COMPONENTS},
                engine_files=engine_files, files=files, device=device,
                model_config={"vae_scale_factor": model.vae_scale_factor, "default_size": model.default_size,
                              "text_width": text_width},
                package_version=__version__)
            (staging / MANIFEST_NAME).write_text(manifest.to_json())
            _swap_into_place(staging, destination)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _onnxruntime_version() -> str:
    from sd_struct_rt.backends.onnxruntime_backend import require_onnxruntime

    return require_onnxruntime().__version__
