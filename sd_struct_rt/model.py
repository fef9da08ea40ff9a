"""Model folders: the embedded ``tiny`` model, hub ids, local folders, and the loader they share.

``tiny`` is only configs in the package. The first use materialises it into a diffusers-format
folder in the cache (seeded random weights, the real CLIP vocabulary); from then on it is
loaded by exactly the code that loads ``runwayml/stable-diffusion-v1-5`` or any local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path

from .errors import UserError
from .files import clear_stale_staging, exclusive_lock, lock_path_for, remove_entry, reporting, staging_path
from .paths import cache_dir

EMBEDDED_MODELS = ("tiny",)
# Trained models that ship whole in the package, weights included, and load from where they lie.
PACKAGED_MODELS = ("shapes",)
# Weights of the embedded model are a pure function of its configs and this seed.
MATERIALISE_SEED = 20230222
# In a cached model folder: the sha256 of every file, written last, checked at every use.
DIGESTS_NAME = "sdrt-digests.json"


def _embedded_config_root(name: str):
    return resources.files("sd_struct_rt") / "models" / name


def _config_digest(name: str) -> str:
    digest = hashlib.sha256(str(MATERIALISE_SEED).encode())
    root = _embedded_config_root(name)
    for component in ("model_index.json", "unet/config.json", "vae/config.json",
                      "text_encoder/config.json", "scheduler/scheduler_config.json"):
        digest.update(component.encode())
        digest.update((root / component).read_bytes())
    return digest.hexdigest()[:12]


def materialise_embedded(name: str, destination: Path) -> None:
    """Write embedded model ``name`` with seeded random weights into the new folder ``destination``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .vocab import write_tokenizer_folder

    root = _embedded_config_root(name)
    destination.mkdir(parents=True)
    (destination / "model_index.json").write_bytes((root / "model_index.json").read_bytes())
    (destination / "scheduler").mkdir()
    (destination / "scheduler" / "scheduler_config.json").write_bytes(
        (root / "scheduler" / "scheduler_config.json").read_bytes())
    write_tokenizer_folder(destination / "tokenizer")

    def config(component: str) -> dict:
        return json.loads((root / component / "config.json").read_text())

    # Each part gets its own seed so that changing one config leaves the others' weights alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MATERIALISE_SEED)
        UNet2DConditionModel.from_config(config("unet")).save_pretrained(destination / "unet")
        torch.manual_seed(MATERIALISE_SEED + 1)
        AutoencoderKL.from_config(config("vae")).save_pretrained(destination / "vae")
        torch.manual_seed(MATERIALISE_SEED + 2)
        text_config = CLIPTextConfig(**{k: v for k, v in config("text_encoder").items()
                                        if k not in ("architectures", "model_type")})
        CLIPTextModel(text_config).save_pretrained(destination / "text_encoder")


def _file_digests(folder: Path) -> dict[str, str]:
    from .manifest import file_sha256

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
    folder = cache_dir() / "models" / f"{name}-{_config_digest(name)}"
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
                materialise_embedded(name, staging / "model")
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
    """Map ``tiny``, ``shapes``, a local folder or a hub id to a local diffusers-format folder."""
    if model in EMBEDDED_MODELS:
        return embedded_model_folder(model)
    if model in PACKAGED_MODELS:
        return Path(str(_embedded_config_root(model)))
    path = Path(model).expanduser()
    if path.exists():
        return path
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return _download_from_hub(model)
    raise UserError(f"model folder {model} does not exist; use the model 'tiny' or a Stable Diffusion 1.x "
                    "folder in diffusers format")


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
    family_of_folder(folder).check_folder(folder)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder / "tokenizer")


def load_model(model: str):
    """Load ``tiny``, a local model folder or a hub id, in float32 on the CPU."""
    from .families import family_of_folder

    folder = resolve_model_folder(model)
    family = family_of_folder(folder)
    family.check_folder(folder)
    return family.load(folder, model if model in EMBEDDED_MODELS else str(model))
