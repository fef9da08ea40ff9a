"""``sdrt build-engine``: model -> ONNX graphs -> engines -> manifest, all or nothing.

Everything is built in a staging folder beside the destination and swapped in by rename
once the manifest (written last) is complete, so neither an error nor Ctrl-C can leave a
half-written engine set. A lock on the destination keeps two builds from racing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .. import __version__
from ..backends import BuildOptions, BuildTarget, EngineBackend, Stage, engine_backend, require_available
from ..contract import Profile
from ..errors import InputError, UserError
from ..families import COMPONENTS
from ..files import (clear_stale_staging, exclusive_lock, file_sha256, lock_path_for, remove_entry, reporting,
                     staged_prefix, staging_path)
from ..manifest import MANIFEST_NAME, Manifest, OutdatedManifest, foreign_entries, read_manifest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")
# Stages every build announces besides its backend's own: load, three exports, graph checks, manifest.
COMMON_STAGES = 6


def folder_lock(destination: Path):
    """Exclusive lock on ``destination`` for one build; a second build fails at once."""
    return exclusive_lock(lock_path_for(destination),
                          busy=f"another build is writing {destination} right now; wait for it to finish "
                               "or choose another --out")


def weights_sha256(folder: Path) -> str:
    """One digest over every weight file of a model folder, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def check_replaceable(destination: Path) -> None:
    """Only a set we wrote (every entry named by its manifest) or an empty folder may be replaced:
    never a file, a link, or a folder holding anything of the user's."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise UserError(f"{destination} exists and is not a folder; choose another --out")
    if not destination.exists() or not any(destination.iterdir()):
        return
    if not (destination / MANIFEST_NAME).is_file():
        raise UserError(f"{destination} exists and is not an engine set (no {MANIFEST_NAME}); choose another --out")
    try:
        file_names = list(read_manifest(destination).files)
    except OutdatedManifest as outdated:  # a set of ours from an older sdrt: its manifest still names its files
        file_names = outdated.file_names
    except UserError:
        raise UserError(f"{destination} holds a {MANIFEST_NAME} that sdrt cannot read, so its files may not be ours; "
                        "choose another --out, or delete the folder yourself") from None
    foreign = foreign_entries(file_names, destination)
    if foreign:
        raise UserError(f"{destination} is an engine set with files its manifest does not name ({foreign[0]}"
                        f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); they may be yours, so "
                        "nothing was replaced: move them or choose another --out")


def _swap_into_place(staging: Path, destination: Path) -> None:
    check_replaceable(destination)
    if destination.exists():
        retired = destination.parent / f"{staged_prefix(destination.name)}{os.getpid()}-replaced"
        os.rename(destination, retired)
        try:
            os.rename(staging, destination)
        except BaseException:
            os.rename(retired, destination)  # the old set stays usable
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, destination)


def _copy_runtime_files(model_folder: Path, staging: Path, tokenizer_folders: tuple[str, ...]) -> None:
    # The runtime over engines needs no model folder: it reads tokenizers and scheduler here.
    for name in tokenizer_folders:
        shutil.copytree(model_folder / name, staging / name)
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
    from ..families import family_named
    from ..model import load_model, model_facts

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
    check_replaceable(destination)
    with folder_lock(destination), reporting("write the engine set", destination):
        # Holding the lock, every staging entry of this destination is a killed build's leftover.
        clear_stale_staging(destination, any_owner=True)
        staging = staging_path(destination, "folder")
        try:
            stage("loading the model")
            model = load_model(model_ref)
            family = family_named(model.facts.family)
            graphs = export_graphs(model, family, mode, staging, stage)
            stage("checking the graphs")
            check_graphs(graphs, family.cross_attention_count(model))
            contracts = family.networks(model.facts, mode)
            engine_files = backend.build(graphs, BuildTarget(contracts, profile, precision, staging, options), stage)
            stage("writing the manifest")
            _copy_runtime_files(model.folder, staging, family.tokenizer_folders)
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
            remove_entry(staging)
