"""Model folders: the embedded models, hub ids, local folders, and the loader they share.

An embedded model (``tiny``, ``tiny-sd2``, ``tiny-sdxl``, ``shapes``) is configs in the package,
plus trained weights for ``shapes``. The first use materialises it into a diffusers-format folder
in the cache (seeded random weights where none ship, the real CLIP vocabulary); from then on it
is loaded by exactly the code that loads ``runwayml/stable-diffusion-v1-5`` or any local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path

from .errors import UserError
from .families import DRAWING_DEFAULTS_NAME
from .files import (clear_stale_staging, exclusive_lock, file_sha256, lock_path_for, remove_entry, reporting,
                    staging_path)
from .paths import cache_dir

# ``shapes`` ships its trained weights; the others are configs whose weights are seeded.
EMBEDDED_MODELS = ("tiny", "tiny-sd2", "tiny-sdxl", "shapes", "shapes-clip")
# Seeded weights of an embedded model are a pure function of its configs and this seed.
MATERIALISE_SEED = 20230222
# The seed offset of each part's weights; a part keeps its offset for ever, so that the weights
# of an embedded model do not change when another part is added to the list.
COMPONENT_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}
# In a cached model folder: the sha256 of every file, written last, checked at every use.
DIGESTS_NAME = "sdrt-digests.json"


def embedded_config_root(name: str):
    return resources.files("sd_struct_rt") / "models" / name


# Where a part of an embedded model ships trained weights, under the name its library loads.
SHIPPED_WEIGHTS = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}


def _source_files(root, prefix: str = ""):
    """(relative name, entry) of every config and shipped weight file under ``root`` (a path or
    package resource)."""
    for entry in sorted(root.iterdir(), key=lambda entry: entry.name):
        if entry.is_dir():
            yield from _source_files(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith((".json", ".safetensors")):
            yield f"{prefix}{entry.name}", entry


def _config_digest(root) -> str:
    """What goes into a materialised model (configs, shipped weights, the seed of the others): this
    names it in the cache."""
    digest = hashlib.sha256(str(MATERIALISE_SEED).encode())
    for name, entry in _source_files(root):
        digest.update(name.encode())
        digest.update(entry.read_bytes())
    return digest.hexdigest()[:12]


def materialise(root, destination: Path) -> None:
    """Write the model described in ``root`` (a folder laid out like a diffusers model, without
    tokenizer vocabularies) into the new folder ``destination``.

    Its ``model_index.json`` lists the parts: CLIP tokenizers are written from the real CLIP
    vocabulary (a ``tokenizer_config.json`` in ``root`` overrides settings such as the pad token),
    schedulers are copied, models copy the weights shipped beside their config or else get seeded
    random weights.
    """
    import diffusers
    import torch
    import transformers

    from .vocab import write_tokenizer_folder

    index = json.loads((root / "model_index.json").read_text())
    destination.mkdir(parents=True)
    (destination / "model_index.json").write_bytes((root / "model_index.json").read_bytes())
    if (root / DRAWING_DEFAULTS_NAME).is_file():
        (destination / DRAWING_DEFAULTS_NAME).write_bytes((root / DRAWING_DEFAULTS_NAME).read_bytes())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        library, class_name = spec
        source = root / name
        if class_name == "CLIPTokenizer":
            overrides = source / "tokenizer_config.json"
            write_tokenizer_folder(destination / name, json.loads(overrides.read_text()) if overrides.is_file() else {})
        elif class_name.endswith("Scheduler"):
            (destination / name).mkdir()
            (destination / name / "scheduler_config.json").write_bytes((source / "scheduler_config.json").read_bytes())
        elif (source / SHIPPED_WEIGHTS[library]).is_file():
            (destination / name).mkdir()
            for file_name in ("config.json", SHIPPED_WEIGHTS[library]):
                (destination / name / file_name).write_bytes((source / file_name).read_bytes())
        else:
            config = json.loads((source / "config.json").read_text())
            # Each part has its own seed, so that changing one config leaves the others' weights alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(MATERIALISE_SEED + COMPONENT_SEEDS[name])
                if library == "diffusers":
                    model = getattr(diffusers, class_name).from_config(config)
                else:
                    settings = {key: value for key, value in config.items()
                                if key not in ("architectures", "model_type")}
                    model = getattr(transformers, class_name)(transformers.CLIPTextConfig(**settings))
            model.save_pretrained(destination / name)


def _file_digests(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != DIGESTS_NAME}


def _damage(folder: Path) -> str | None:
    """What is wrong with a cached model folder, judged by the digests recorded when it was written."""
    try:
        recorded = json.loads((folder / DIGESTS_NAME).read_text())
        actual = _file_digests(folder)
    except (OSError, ValueError) as error:
        return f"its file list is unreadable ({type(error).__name__})"
    changed = sorted(name for name in recorded.keys() | actual.keys() if recorded.get(name) != actual.get(name))
    return f"{changed[0]} is missing, changed or unexpected" if changed else None


def embedded_model_folder(name: str) -> Path:
    """The cached folder of embedded model ``name``, materialised on first use and rebuilt when damaged."""
    return materialised_folder(name, embedded_config_root(name))


def materialised_folder(name: str, root) -> Path:
    """The cached folder of the model configured in ``root`` (see ``materialise``), written on
    first use and rebuilt when damaged; ``name`` names it in the cache."""
    folder = cache_dir() / "models" / f"{name}-{_config_digest(root)}"
    if folder.is_dir() and _damage(folder) is None:
        return folder
    with reporting("write the model cache", folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock_path_for(folder)):  # a concurrent first use waits here, then finds it done
            clear_stale_staging(folder, any_owner=True)
            if folder.exists():
                damage = _damage(folder)
                if damage is None:
                    return folder
                warnings.warn(f"the cached model {folder} was damaged ({damage}); writing it again")
                retired = staging_path(folder, "folder")
                os.replace(folder, retired)
                remove_entry(retired)
            staging = staging_path(folder, "folder")
            try:
                materialise(root, staging / "model")
                digests = json.dumps(_file_digests(staging / "model"), indent=1, sort_keys=True)
                (staging / "model" / DIGESTS_NAME).write_text(digests + "\n")
                os.rename(staging / "model", folder)
            finally:
                remove_entry(staging)
    return folder


def _download_from_hub(model_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer/*",
                    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors"]
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as error:  # the hub client raises many kinds; all mean "not reachable here"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot fetch model {model_id!r} from the Hugging Face hub ({reason}); "
                        "pass a local diffusers-format folder instead") from None


def resolve_model_folder(model: str) -> Path:
    """Map an embedded model's name, a local folder or a hub id to a local diffusers-format folder."""
    if model in EMBEDDED_MODELS:
        return embedded_model_folder(model)
    path = Path(model).expanduser()
    if path.exists():
        return path
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return _download_from_hub(model)
    raise UserError(f"model folder {model} does not exist; use an embedded model "
                    f"({', '.join(EMBEDDED_MODELS)}) or a Stable Diffusion folder in diffusers format")


def model_facts(model: str):
    """The ``ModelFacts`` of ``model`` from its configs alone (no weights loaded)."""
    from .families import family_of_folder

    folder = resolve_model_folder(model)
    family = family_of_folder(folder)
    family.check_folder(folder)
    return family.read_facts(folder)


def load_tokenizer(model: str):
    """Only the tokenizer of ``model`` (what parsing needs), without loading any weights."""
    from .families import family_of_folder

    folder = resolve_model_folder(model)
    family = family_of_folder(folder)
    family.check_folder(folder)
    return family.load_tokenizers(folder)[0]


def load_model(model: str):
    """Load an embedded model, a local model folder or a hub id, in float32 on the CPU."""
    from .families import family_of_folder

    folder = resolve_model_folder(model)
    family = family_of_folder(folder)
    family.check_folder(folder)
    return family.load(folder, model if model in EMBEDDED_MODELS else str(model))
