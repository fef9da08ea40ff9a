"""Stable Diffusion XL (base): two CLIP text encoders, pooled text embeddings and size conditioning.

What differs from SD 1.x, and how structure carries over unchanged (SPEC 2-4):

* **Text.** Every string (prompt, negative prompt, each phrase) goes through both text encoders;
  their penultimate hidden states are concatenated (``D = 768 + 1280`` for the real model), as
  diffusers' ``encode_prompt`` does. Both tokenizers share CLIP's BPE (the second pads with id 0),
  so a phrase's token span is the same in both, and aligned sequences are built from the
  concatenated embeddings exactly as in SPEC 3.
* **Pooled embedding.** The UNet also reads ``text_embeds [N, P]``: the second encoder's pooled
  output of the *whole* prompt (of the negative prompt on unconditional rows). With
  ``force_zeros_for_empty_prompt`` an empty negative prompt is zeros, as diffusers does.
* **Size conditioning.** ``time_ids [N, 6]``: original size, crop corner and target size,
  ``(H, W, 0, 0, H, W)`` for an image of H x W pixels.
* **Engines.** The text encoder is one graph with two inputs (``input_ids``, ``input_ids_2``) and
  two outputs (``text_embeddings``, ``pooled_embeddings``): every string needs both encoders, so one
  call with one profile is what the pipeline always makes. The UNet graph gains ``text_embeds``
  and ``time_ids``. Base model only; the refiner (an img2img pipeline) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..contract import Fixed, ModelFacts, TensorSpec, integers_below, uniform_below
from ..errors import UserError
from ..text import token_ids
from .sd1 import (LATENT_CHANNELS, READ_FIELDS, REQUIRED_FIELDS, TOKENIZER_FILES, Dims, StableDiffusion1,
                  _read_config)

ADDED_CONDITIONS = ("text_embeds", "time_ids")
FOLDER_HINT = ("expected a diffusers-format Stable Diffusion XL base folder (model_index.json, unet/, vae/, "
               "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)")
REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "text_encoder_2/config.json", "scheduler/scheduler_config.json")


@dataclass
class StableDiffusionXLModel:
    """The parts of an SDXL base folder, loaded in float32 on the CPU."""

    model_id: str
    folder: Path
    facts: ModelFacts
    tokenizer: Any
    tokenizer_2: Any
    text_encoder: Any
    text_encoder_2: Any
    unet: Any
    vae: Any
    scheduler: Any

    @property
    def tokenizers(self) -> tuple:
        return self.tokenizer, self.tokenizer_2


class TextEncodersXL(nn.Module):
    """Both encoders on the same strings: concatenated penultimate hidden states, and the second
    encoder's pooled (projected) output."""

    def __init__(self, text_encoder: nn.Module, text_encoder_2: nn.Module):
        super().__init__()
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2

    def forward(self, input_ids: torch.Tensor, input_ids_2: torch.Tensor):
        first = self.text_encoder(input_ids.long(), output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2.long(), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def size_conditions(rows: int, height: int, width: int) -> torch.Tensor:
    """``time_ids``: original size, crop corner, target size, as diffusers' SDXL pipeline makes them."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).expand(rows, 6)


class StableDiffusionXL(StableDiffusion1):
    name = "sdxl"
    title = "Stable Diffusion XL"
    tokenizer_folders = ("tokenizer", "tokenizer_2")
    added_conditions = ADDED_CONDITIONS
    read_fields = {**READ_FIELDS,
                   "unet/config.json": {**READ_FIELDS["unet/config.json"], "addition_embed_type": "text"},
                   "text_encoder_2/config.json": {"hidden_size": "count", "projection_dim": "count"}}
    required_fields = REQUIRED_FIELDS | {"projection_dim"}

    def claims(self, model_index: Mapping[str, Any], folder: Path) -> bool:
        return model_index.get("_class_name") == "StableDiffusionXLPipeline"

    def check_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; {FOLDER_HINT}")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        missing += [f"{name}/" for name in self.tokenizer_folders if not (folder / name).is_dir()]
        if missing:
            raise UserError(f"{folder} is not a Stable Diffusion XL model: missing {', '.join(missing)}; "
                            f"{FOLDER_HINT}")
        missing = [f"{name}/{file}" for name in self.tokenizer_folders for file in TOKENIZER_FILES
                   if not (folder / name / file).is_file()]
        if missing:
            raise UserError(f"{folder}: the tokenizers lack {', '.join(missing)}; {FOLDER_HINT}")
        self.check_fields(folder)
        unet = _read_config(folder, "unet/config.json")
        first = _read_config(folder, "text_encoder/config.json")
        second = _read_config(folder, "text_encoder_2/config.json")
        if unet.get("in_channels") != LATENT_CHANNELS or unet.get("addition_embed_type") != "text_time":
            raise UserError(f"{folder}: unet is not an SDXL UNet (4 latent channels, text_time added conditions)")
        width = (first.get("hidden_size") or 0) + (second.get("hidden_size") or 0)
        if unet.get("cross_attention_dim") != width:
            raise UserError(f"{folder}: unet cross_attention_dim {unet.get('cross_attention_dim')} is not the two "
                            f"text encoders' widths together ({width})")

    def parts(self, diffusers, text_defaults: dict) -> dict[str, tuple[str, dict]]:
        return {**super().parts(diffusers, text_defaults), "text_encoder_2": ("transformers", text_defaults)}

    def read_facts(self, folder: Path) -> ModelFacts:
        facts = super().read_facts(folder)
        try:
            first, second = _read_config(folder, "text_encoder/config.json"), \
                _read_config(folder, "text_encoder_2/config.json")
            index = json.loads((folder / "model_index.json").read_text())
            return ModelFacts(**{**facts.__dict__, "family": self.name,
                                 "text_width": int(first["hidden_size"]) + int(second["hidden_size"]),
                                 "pooled_width": int(second["projection_dim"]),
                                 "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt",
                                                                                True))})
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{folder}: its configs lack {error} or hold the wrong type; {FOLDER_HINT}") from None

    def load(self, folder: Path, model_id: str) -> StableDiffusionXLModel:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        first = super().load(folder, model_id)  # unet, vae, scheduler, the first tokenizer and encoder
        try:
            tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval()
        except Exception as error:  # what the checks before loading could not see is still one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{folder}: cannot load the model weights ({reason})") from None
        return StableDiffusionXLModel(model_id, folder, self.read_facts(folder), first.tokenizer, tokenizer_2,
                                      first.text_encoder, text_encoder_2, first.unet, first.vae, first.scheduler)

    def _text_encoder_inputs(self, facts: ModelFacts, dims: Dims) -> tuple[TensorSpec, ...]:
        ids = integers_below(facts.vocab_size, torch.int32)
        return (TensorSpec("input_ids", torch.int32, (dims.strings, dims.tokens), ids),
                TensorSpec("input_ids_2", torch.int32, (dims.strings, dims.tokens), ids))

    def _text_encoder_outputs(self, facts: ModelFacts, dims: Dims) -> tuple[TensorSpec, ...]:
        pooled = Fixed("pooled width", "pooled text features", facts.pooled_width)
        return (TensorSpec("text_embeddings", torch.float32, (dims.strings, dims.tokens, dims.text_width)),
                TensorSpec("pooled_embeddings", torch.float32, (dims.strings, pooled)))

    def _unet_added_inputs(self, facts: ModelFacts, dims: Dims) -> tuple[TensorSpec, ...]:
        pooled = Fixed("pooled width", "pooled text features", facts.pooled_width)
        sizes = Fixed("size conditions", "original size, crop corner, target size", 6)
        return (TensorSpec("text_embeds", torch.float32, (dims.rows, pooled)),
                TensorSpec("time_ids", torch.float32, (dims.rows, sizes), uniform_below(1024)))

    def _text_encoder_module(self, model: StableDiffusionXLModel) -> nn.Module:
        return TextEncodersXL(model.text_encoder, model.text_encoder_2)

    def encode_texts(self, network: Any, tokenizers: tuple, texts: list[str],
                     facts: ModelFacts) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = network(input_ids=token_ids(tokenizers[0], texts), input_ids_2=token_ids(tokenizers[1], texts))
        embeddings, pooled = outputs["text_embeddings"], outputs["pooled_embeddings"]
        if facts.force_zeros_for_empty_prompt:
            empty = torch.tensor([not text for text in texts], device=embeddings.device)
            embeddings = torch.where(empty[:, None, None], torch.zeros_like(embeddings), embeddings)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return embeddings, pooled

    def unet_inputs(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: Any, mode: str,
                    facts: ModelFacts) -> dict[str, torch.Tensor]:
        scale = facts.vae_scale_factor
        return {**super().unet_inputs(sample, timestep, conditioning, mode, facts),
                "text_embeds": conditioning.pooled,
                "time_ids": size_conditions(sample.shape[0], sample.shape[2] * scale, sample.shape[3] * scale)}


FAMILY = StableDiffusionXL()
