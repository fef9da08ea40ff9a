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
from typing import Iterator

from sd_struct_rt import __version__
from sd_struct_rt.backends import BuildOptions, EngineBackend, Stage, engine_backend, require_available
from sd_struct_rt.contract import Profile
from sd_struct_rt.errors import InputError, UserError
from sd_struct_rt.families import COMPONENTS
from sd_struct_rt.files import current_umask
from sd_struct_rt.manifest import MANIFEST_NAME, Manifest, file_sha256

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")
# Stages every build announces besides its backend's own: load, three exports, graph checks, manifest.
COMMON_STAGES = 6


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


def planned_stages(backend: EngineBackend) -> int:
    """How many stages ``build_engine_set`` announces for ``backend``: a progress bar's total."""
    return COMMON_STAGES + backend.build_stages


def check_graphs(graphs: dict[str, Path], cross_attentions: int) -> None:
    """The graphs of every set are the ones TensorRT would take: they must parse there, and
    every cross-attention must stay the MatMul-Softmax-MatMul that TensorRT fuses (SPEC 4)."""
    from .graph_checks import GraphCheckError, check_fusable_cross_attention, check_tensorrt_support

    try:
        for graph in graphs.values():
            check_tensorrt_support(graph)
        check_fusable_cross_attention(graphs["unet"], expected=cross_attentions)
    except GraphCheckError as error:
        raise UserError(f"the exported graphs fail a check, so no engine set was written: {error}") from None


def build_engine_set(model_ref: str, backend_name: str, mode: str, profile: Profile, precision: str | None,
                     destination: Path, stage: Stage = lambda name: None,
                     options: BuildOptions = BuildOptions()) -> Manifest:
    """Export ``model_ref`` and build its engines for ``backend_name`` into ``destination``."""
    from sd_struct_rt.families import family_named
    from sd_struct_rt.model import load_model, model_facts

    from .onnx_export import EXPORTER, OPSET, export_graphs

    backend = engine_backend(backend_name)
    precision = precision or backend.default_precision
    if precision not in backend.precisions:
        raise InputError(f"{backend.title} engines take precision {' or '.join(backend.precisions)}, "
                         f"not {precision}")
    require_available(backend)
    backend_version, device = backend.version(), backend.device_description()
    profile.require_size_step(model_facts(model_ref).size_step)
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
            family = family_named(model.facts.family)
            graphs = export_graphs(model, family, mode, staging, stage)
            stage("checking the graphs")
            check_graphs(graphs, family.cross_attention_count(model))
            contracts = family.networks(model.facts, mode)
            engine_files = backend.build(graphs, contracts, profile, model.facts, precision, staging, options, stage)
            stage("writing the manifest")
            _copy_runtime_files(model.folder, staging)
            files = {str(p.relative_to(staging)): file_sha256(p)
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            manifest = Manifest(
                model_id=model.model_id, weights_sha256=weights_sha256(model.folder), mode=mode,
                backend=backend.name, backend_version=backend_version, precision=precision, profile=profile,
                exporter=EXPORTER, opset=OPSET,
                onnx_sha256={component: files[graphs[component].name] for component in COMPONENTS},
                engine_files=engine_files, files=files, model_facts=model.facts, device=device,
                package_version=__version__)
            (staging / MANIFEST_NAME).write_text(manifest.to_json())
            _swap_into_place(staging, destination)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)
