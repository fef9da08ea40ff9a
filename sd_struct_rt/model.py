"""Model folders: the embedded ``tiny`` model and the loader shared with real SD 1.x folders.

``tiny`` is only configs in the package. The first use materialises it into a diffusers-format
folder in the cache (seeded random weights, the real CLIP vocabulary); from then on it is
loaded by exactly the code that loads ``runwayml/stable-diffusion-v1-5`` or any local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import cache_dir

EMBEDDED_MODELS = ("tiny",)
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Weights of the embedded model are a pure function of its configs and this seed.
MATERIALISE_SEED = 20230222


@dataclass
class StableDiffusionModel:
    """The five parts of an SD 1.x folder, loaded in float32 on the CPU."""

    model_id: str
    folder: Path
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor


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


def embedded_model_folder(name: str) -> Path:
    """The cached folder of embedded model ``name``, materialised on first use."""
    folder = cache_dir() / "models" / f"{name}-{_config_digest(name)}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        materialise_embedded(name, staging / "model")
        try:
            os.rename(staging / "model", folder)
        except OSError:
            if not folder.is_dir():  # anything but a concurrent materialisation that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
                        "pass a local diffusers-format folder with --model PATH") from None


def resolve_model_folder(model: str) -> Path:
    """Map ``tiny``, a local folder or a hub id to a local diffusers-format folder."""
    if model in EMBEDDED_MODELS:
        return embedded_model_folder(model)
    path = Path(model).expanduser()
    if path.exists():
        return path
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return _download_from_hub(model)
    raise UserError(f"model folder {model} does not exist; use --model tiny or a Stable Diffusion 1.x "
                    "folder in diffusers format")


def check_sd_folder(folder: Path) -> None:
    """Refuse anything that is not a diffusers-format SD 1.x folder, naming what is wrong."""
    hint = ("expected a diffusers-format Stable Diffusion 1.x folder (model_index.json, unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/)")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; {hint}")
    required = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json"]
    missing = [name for name in required if not (folder / name).is_file()]
    if not (folder / "tokenizer").is_dir():
        missing.append("tokenizer/")
    if missing:
        raise UserError(f"{folder} is not a Stable Diffusion model: missing {', '.join(missing)}; {hint}")
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: unreadable config ({error}); {hint}") from None
    if unet.get("_class_name") != "UNet2DConditionModel" or unet.get("in_channels") != 4:
        raise UserError(f"{folder}: unet is not an SD 1.x UNet2DConditionModel with 4 latent channels")
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise UserError(f"{folder}: unet cross_attention_dim {unet.get('cross_attention_dim')} does not "
                        f"match the text encoder width {text.get('hidden_size')}; not an SD 1.x model")


def default_image_size(model: str) -> int:
    """The model's native image side in pixels, read from its configs (no weights loaded)."""
    folder = resolve_model_folder(model)
    check_sd_folder(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def load_tokenizer(model: str):
    """Only the tokenizer of ``model`` (what parsing needs), without loading any weights."""
    folder = resolve_model_folder(model)
    check_sd_folder(folder)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder / "tokenizer")


def load_model(model: str) -> StableDiffusionModel:
    """Load ``tiny``, a local SD 1.x folder or a hub id, in float32 on the CPU."""
    folder = resolve_model_folder(model)
    check_sd_folder(folder)
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    import diffusers

    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler_class = getattr(diffusers, scheduler_config.get("_class_name", ""), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise UserError(f"{folder}: unknown scheduler {scheduler_config.get('_class_name')!r}")
    try:
        parts = dict(
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
            unet=UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
            vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
            scheduler=scheduler_class.from_config(scheduler_config),
        )
    except (OSError, ValueError, EnvironmentError) as error:
        reason = str(error).splitlines()[0]
        raise UserError(f"{folder}: cannot load the model weights ({reason})") from None
    model_id = model if model in EMBEDDED_MODELS else str(model)
    return StableDiffusionModel(model_id=model_id, folder=folder, **parts)
