"""Model families: one module each, holding everything that differs between them.

A family module defines a ``Family``: how to recognise its folders, the facts the runtime needs
without weights (``ModelFacts``), the contract of each network (``sd_struct_rt.contract``), how
to load its parts, and the torch modules whose forward *is* that contract, which the torch
backend runs and the export stage traces. Adding a family is one module and one line below.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Mapping, Protocol

from ..contract import ModelFacts, NetworkContract
from ..errors import UserError

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
DRAWING_DEFAULTS_NAME = "sdrt_defaults.json"  # a model folder's own steps and guidance scale
# family name -> module; the order is the order in which families are asked to claim a folder.
FAMILY_MODULES = {"sdxl": "sd_struct_rt.families.sdxl", "sd2": "sd_struct_rt.families.sd2",
                  "sd1": "sd_struct_rt.families.sd1"}


class Family(Protocol):
    name: str
    title: str  # e.g. "Stable Diffusion 1.x", for messages
    tokenizer_folders: tuple[str, ...]  # the first one's tokens are the ones spans count

    def encode_texts(self, network: Any, tokenizers: tuple, texts: list[str], facts: ModelFacts) -> tuple[Any, Any]:
        """Texts through the text-encoder network: ``[M, T, D]`` embeddings and pooled ``[M, P]``
        ones (None for families whose UNet does not read them)."""

    def claims(self, model_index: Mapping[str, Any], folder: Path) -> bool:
        """Whether a folder with this ``model_index.json`` is one of ours."""

    def check_folder(self, folder: Path) -> None:
        """Refuse, in one line naming what is wrong, a folder that cannot be loaded."""

    def read_facts(self, folder: Path) -> ModelFacts:
        """The facts of a checked folder, from its configs alone."""

    def load(self, folder: Path, model_id: str) -> Any:
        """Every part of the model, float32 on the CPU."""

    def load_tokenizers(self, folder: Path) -> tuple:
        """The tokenizers of a model folder or an engine set, in ``tokenizer_folders``' order."""

    def networks(self, facts: ModelFacts, mode: str) -> dict[str, NetworkContract]:
        """The contract of each component; ``mode`` names the UNet's level input."""

    def torch_module(self, model: Any, component: str, role: str = "values") -> Any:
        """The ``nn.Module`` of ``component`` that takes its contract's inputs in order (the UNet:
        ``role``'s structured UNet, over the model's own UNet, which gets the structured processor)."""

    def torch_modules(self, model: Any, role: str) -> dict[str, Any]:
        """``torch_module`` of every component, the UNet's for ``role``."""

    def unet_inputs(self, sample: Any, timestep: Any, conditioning: Any, mode: str,
                    facts: ModelFacts) -> dict[str, Any]:
        """The UNet's named inputs for one denoising step, from a ``Conditioning``."""

    def cross_attention_count(self, model: Any) -> int:
        """How many cross-attention layers the UNet has (each must stay fusable)."""


def family_named(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise UserError(f"unknown model family {name!r}; this sdrt knows {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} is not a Stable Diffusion model: missing model_index.json; expected a "
                        "diffusers-format folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}); expected a diffusers model_index.json") \
            from None
    if not isinstance(index, dict):
        raise UserError(f"{path} is not a JSON object; expected a diffusers model_index.json")
    return index


def family_of_folder(folder: Path) -> Family:
    """The family that claims ``folder``, or one line naming the pipeline class nobody supports."""
    index = read_model_index(folder)
    for name in FAMILY_MODULES:
        family = family_named(name)
        if family.claims(index, folder):
            return family
    pipeline_class = index.get("_class_name")
    raise UserError(f"{folder} holds a {pipeline_class!r} model, which sd-struct-rt does not support; give a "
                    "Stable Diffusion 1.x, 2.x or XL base text-to-image folder (StableDiffusionPipeline or "
                    "StableDiffusionXLPipeline)")


def read_drawing_defaults(folder: Path) -> dict:
    """``default_guidance_scale`` and ``default_steps`` from the folder's ``DRAWING_DEFAULTS_NAME``,
    as ``ModelFacts`` fields (empty when the folder has none); a damaged file is one line."""
    from .. import inputs
    from ..errors import InputError

    path = folder / DRAWING_DEFAULTS_NAME
    if not path.exists():
        return {}
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict) or set(recorded) - {"guidance_scale", "num_inference_steps"}:
            raise InputError("it must be a JSON object with guidance_scale and/or num_inference_steps")
        facts = {}
        if "guidance_scale" in recorded:
            facts["default_guidance_scale"] = inputs.guidance(recorded["guidance_scale"])
        if "num_inference_steps" in recorded:
            facts["default_steps"] = inputs.steps(recorded["num_inference_steps"])
        return facts
    except (OSError, ValueError) as error:
        reason = str(error) if isinstance(error, InputError) else type(error).__name__
        raise UserError(f"{path}: unreadable drawing defaults ({reason}); fix or delete the file") from None
