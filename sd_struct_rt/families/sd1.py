"""Stable Diffusion 1.x: a CLIP text encoder, a 4-channel latent UNet, an 8x VAE (SPEC section 5).

The three networks and their engine I/O:

* ``text_encoder``: ``input_ids int32 [M, 77]`` -> ``text_embeddings [M, 77, D]`` (last hidden state);
* ``unet``: ``sample [N, 4, h, w]``, ``timestep float32 [N]``, ``encoder_hidden_states [N, 77, D]``,
  ``value_states`` or ``key_states [N, L, 77, D]`` (by mode), ``level_mask [N, L]`` ->
  ``noise_pred [N, 4, h, w]``;
* ``vae_decoder``: ``latent [N, 4, h, w]`` -> ``images [N, 3, 8h, 8w]`` in ``[0, 1]``, SD's latent
  scaling included.

Engine profiles in the user's units (``Profile``) map onto these axes as follows. TensorRT
picks its kernels by timing them at ``opt``, so ``opt`` is the call we expect most often:

- batch: the smallest batch of the range (interactive generation is mostly one prompt); the
  UNet sees two rows per prompt (classifier-free guidance);
- image side: the model's native size, clamped into the range;
- levels: the middle of ``1..levels``; a caption has a handful of noun phrases, and the UNet is
  padded only to the longest prompt of a batch, not to the engine's maximum;
- text-encoder strings: one call of the smallest batch with every level used (each prompt,
  its phrases and its negative prompt): ``batch * (levels + 1)``, inside ``1..2 * batch * levels``
  because ``levels + 1 <= 2 * levels``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..attention import StructuredUNet
from ..modes import role_named
from ..contract import (Axis, Fixed, ModelFacts, NetworkContract, Profile, Scaled, TensorSpec, integers_below,
                        uniform_below)
from ..errors import UserError
from ..text import token_ids
from . import COMPONENTS, checks, read_drawing_defaults

LATENT_CHANNELS = 4
TRAIN_TIMESTEPS = 1000
REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "scheduler/scheduler_config.json")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# The config fields this family reads itself, and their kinds (``checks.field``).
READ_FIELDS = {
    "unet/config.json": {"_class_name": "text", "in_channels": "count", "cross_attention_dim": "count",
                         "sample_size": "count", "block_out_channels": "counts"},
    "vae/config.json": {"block_out_channels": "counts", "scaling_factor": "number", "latent_channels": "count"},
    "text_encoder/config.json": {"hidden_size": "count", "vocab_size": "count", "hidden_act": "text"},
}
REQUIRED_FIELDS = {"_class_name", "in_channels", "cross_attention_dim", "sample_size", "block_out_channels",
                   "hidden_size", "vocab_size"}
FOLDER_HINT = ("expected a diffusers-format Stable Diffusion 1.x folder (model_index.json, unet/, vae/, "
               "text_encoder/, tokenizer/, scheduler/)")


@dataclass
class StableDiffusionModel:
    """The five parts of an SD 1.x folder, loaded in float32 on the CPU."""

    model_id: str
    folder: Path
    facts: ModelFacts
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any

    @property
    def tokenizers(self) -> tuple:
        return (self.tokenizer,)

    @property
    def vae_scale_factor(self) -> int:
        return self.facts.vae_scale_factor

    @property
    def default_size(self) -> int:
        return self.facts.default_size


class TextEmbeddings(nn.Module):
    """``int32`` token ids in, last hidden states out (the pooled output is not used)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.long()).last_hidden_state


class LatentDecoder(nn.Module):
    """VAE decoder with SD's latent scaling in front and ``[0, 1]`` images out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)


class Dims:
    """The dimensions of a family's contracts, sized by a model's facts."""

    def __init__(self, facts: ModelFacts):
        scale = facts.vae_scale_factor
        self.rows = Axis("N", "batch", "UNet rows, two per prompt", 2)
        self.prompts = Axis("N", "batch", "prompts", 2)
        self.strings = Axis("M", "strings", "texts in one text-encoder call", 2)
        self.levels = Axis("L", "levels", "levels per prompt, the full prompt included", 3)
        # 16x24 latents: unequal, so height and width cannot be confused, and cheap to trace.
        self.height = Axis("h", "height", f"latent pixels, image pixels / {scale}", 16)
        self.width = Axis("w", "width", f"latent pixels, image pixels / {scale}", 24)
        self.channels = Fixed("channels", "latent channels", facts.latent_channels)
        self.tokens = Fixed("tokens", "CLIP positions", facts.tokens)
        self.text_width = Fixed("text width", "text-encoder features", facts.text_width)


def draw_level_mask(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Rows with 1..L real levels (the first row all L), so padding sits behind the mask."""
    rows, levels = shape
    counts = torch.randint(1, levels + 1, (rows,), generator=generator)
    counts[0] = levels
    return (torch.arange(levels)[None, :] < counts[:, None]).float()


def _openclip_text_encoder(folder: Path) -> bool:
    """SD 2.x's OpenCLIP text encoder uses plain GELU where OpenAI's CLIP (SD 1.x) uses quick GELU."""
    try:
        return json.loads((folder / "text_encoder" / "config.json").read_text()).get("hidden_act") == "gelu"
    except (OSError, ValueError, AttributeError):
        return False  # check_folder says what is wrong with it


def _read_config(folder: Path, name: str) -> dict:
    try:
        config = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: unreadable {name} ({type(error).__name__}); {FOLDER_HINT}") from None
    if not isinstance(config, dict):
        raise UserError(f"{folder}: {name} is not a JSON object; {FOLDER_HINT}")
    return config


class StableDiffusion1:
    name = "sd1"
    title = "Stable Diffusion 1.x"
    tokenizer_folders = ("tokenizer",)
    added_conditions: tuple[str, ...] = ()  # the UNet's inputs after level_mask (SDXL's pooled text and sizes)
    read_fields, required_fields = READ_FIELDS, REQUIRED_FIELDS

    def claims(self, model_index: Mapping[str, Any], folder: Path) -> bool:
        return model_index.get("_class_name") == "StableDiffusionPipeline" and not _openclip_text_encoder(folder)

    def check_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; {FOLDER_HINT}")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if not (folder / "tokenizer").is_dir():
            missing.append("tokenizer/")
        if missing:
            raise UserError(f"{folder} is not a Stable Diffusion model: missing {', '.join(missing)}; {FOLDER_HINT}")
        missing = [f"{name}/{file}" for name in self.tokenizer_folders for file in TOKENIZER_FILES
                   if not (folder / name / file).is_file()]
        if missing:
            raise UserError(f"{folder}: the tokenizer lacks {', '.join(missing)}; {FOLDER_HINT}")
        self.check_fields(folder)
        unet = _read_config(folder, "unet/config.json")
        text = _read_config(folder, "text_encoder/config.json")
        if unet.get("_class_name") != "UNet2DConditionModel" or unet.get("in_channels") != LATENT_CHANNELS:
            raise UserError(f"{folder}: unet is not an SD 1.x UNet2DConditionModel with 4 latent channels")
        if unet.get("cross_attention_dim") != text.get("hidden_size"):
            raise UserError(f"{folder}: unet cross_attention_dim {unet.get('cross_attention_dim')} does not "
                            f"match the text encoder width {text.get('hidden_size')}; not an SD 1.x model")

    def check_fields(self, folder: Path) -> None:
        """Every config field this module reads has its type (one line naming the file and the field)."""
        for name, fields in self.read_fields.items():
            config = _read_config(folder, name)
            for field_name, kind in fields.items():
                checks.field(config, folder / name, field_name, kind, required=field_name in self.required_fields)

    def check_before_loading(self, folder: Path) -> None:
        """Every field each part's library reads has the kind of its class's default, and every
        weight file is there with a sane header: a damaged folder is one line, not a traceback
        from inside diffusers, transformers or safetensors."""
        import diffusers
        from transformers import CLIPTextConfig

        text_defaults = CLIPTextConfig().to_dict()
        for part, (library, defaults) in self.parts(diffusers, text_defaults).items():
            checks.matches_defaults(_read_config(folder, f"{part}/config.json"), folder / part / "config.json",
                                    defaults)
            checks.check_weights(folder / part, library)

    def parts(self, diffusers, text_defaults: dict) -> dict[str, tuple[str, dict]]:
        """Each part with weights: its library and the defaults its config is held to (the
        scheduler's config is held to its own class's in ``load``)."""
        return {"unet": ("diffusers", checks.class_defaults(diffusers.UNet2DConditionModel)),
                "vae": ("diffusers", checks.class_defaults(diffusers.AutoencoderKL)),
                "text_encoder": ("transformers", text_defaults)}

    def read_facts(self, folder: Path) -> ModelFacts:
        unet = _read_config(folder, "unet/config.json")
        vae = _read_config(folder, "vae/config.json")
        text = _read_config(folder, "text_encoder/config.json")
        try:
            vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
            downsamplings = len(unet["block_out_channels"]) - 1
            return ModelFacts(family=self.name, text_width=int(text["hidden_size"]),
                              vocab_size=int(text["vocab_size"]), vae_scale_factor=vae_scale,
                              default_size=int(unet["sample_size"]) * vae_scale,
                              size_step=vae_scale * 2 ** downsamplings, latent_channels=LATENT_CHANNELS,
                              **read_drawing_defaults(folder))
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{folder}: its configs lack {error} or hold the wrong type; {FOLDER_HINT}") from None

    def load(self, folder: Path, model_id: str) -> StableDiffusionModel:
        import diffusers
        from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
        from transformers import CLIPTextModel

        scheduler_config = _read_config(folder, "scheduler/scheduler_config.json")
        scheduler_class = getattr(diffusers, str(scheduler_config.get("_class_name", "")), None)
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
            raise UserError(f"{folder}: unknown scheduler {scheduler_config.get('_class_name')!r}")
        self.check_before_loading(folder)
        (tokenizer, *_) = self.load_tokenizers(folder)
        checks.matches_defaults(scheduler_config, folder / "scheduler" / "scheduler_config.json",
                                checks.class_defaults(scheduler_class))
        try:
            parts = dict(
                tokenizer=tokenizer,
                text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
                unet=UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
                vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
                scheduler=scheduler_class.from_config(scheduler_config),
            )
        except Exception as error:  # the checks above catch what they can; what a library still finds is one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{folder}: cannot load the model weights ({reason})") from None
        return StableDiffusionModel(model_id=model_id, folder=folder, facts=self.read_facts(folder), **parts)

    def load_tokenizers(self, folder: Path) -> tuple:
        from transformers import CLIPTokenizer

        tokenizers = []
        for name in self.tokenizer_folders:
            try:
                tokenizers.append(CLIPTokenizer.from_pretrained(folder / name))
            except Exception as error:  # a damaged vocab.json or merges.txt
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserError(f"{folder / name}: cannot load the tokenizer ({type(error).__name__}: "
                                f"{reason[:200]}); {FOLDER_HINT}") from None
        return tuple(tokenizers)

    def networks(self, facts: ModelFacts, mode: str) -> dict[str, NetworkContract]:
        level_input = role_named(mode).level_input  # SPEC 5: named after the role the levels play
        dims = Dims(facts)
        scale, step = facts.vae_scale_factor, facts.size_step

        def latent_sides(profile: Profile) -> tuple[int, int, int]:
            low, high = profile.size
            opt = min(max(facts.default_size // step * step, low), high)
            return low // scale, opt // scale, high // scale

        def unet_ranges(profile: Profile) -> dict[str, tuple[int, int, int]]:
            low, high = profile.batch
            side = latent_sides(profile)
            return {"N": (2 * low, 2 * low, 2 * high), "L": (1, (profile.levels + 2) // 2, profile.levels),
                    "h": side, "w": side}

        def text_ranges(profile: Profile) -> dict[str, tuple[int, int, int]]:
            low, high = profile.batch
            return {"M": (1, low * (profile.levels + 1), 2 * high * profile.levels)}

        def vae_ranges(profile: Profile) -> dict[str, tuple[int, int, int]]:
            low, high = profile.batch
            side = latent_sides(profile)
            return {"N": (low, low, high), "h": side, "w": side}

        rows, levels, tokens, text_width = dims.rows, dims.levels, dims.tokens, dims.text_width
        latents = (rows, dims.channels, dims.height, dims.width)
        return {
            "text_encoder": NetworkContract("text_encoder", self._text_encoder_inputs(facts, dims),
                                            self._text_encoder_outputs(facts, dims), text_ranges),
            "unet": NetworkContract(
                "unet",
                (TensorSpec("sample", torch.float32, latents),
                 # float32 and exact (SPEC 5): fractional timesteps (Euler, Karras sigmas) pass as given
                 TensorSpec("timestep", torch.float32, (rows,), uniform_below(TRAIN_TIMESTEPS), exact=True),
                 TensorSpec("encoder_hidden_states", torch.float32, (rows, tokens, text_width)),
                 TensorSpec(level_input, torch.float32, (rows, levels, tokens, text_width)),
                 TensorSpec("level_mask", torch.float32, (rows, levels), draw_level_mask),
                 *self._unet_added_inputs(facts, dims)),
                (TensorSpec("noise_pred", torch.float32, latents),),
                unet_ranges),
            "vae_decoder": NetworkContract(
                "vae_decoder",
                (TensorSpec("latent", torch.float32, (dims.prompts, dims.channels, dims.height, dims.width)),),
                (TensorSpec("images", torch.float32,
                            (dims.prompts, Fixed("channels", "image channels", 3), Scaled(dims.height, scale),
                             Scaled(dims.width, scale))),),
                vae_ranges),
        }

    def _text_encoder_inputs(self, facts: ModelFacts, dims: "Dims") -> tuple[TensorSpec, ...]:
        return (TensorSpec("input_ids", torch.int32, (dims.strings, dims.tokens),
                           integers_below(facts.vocab_size, torch.int32)),)

    def _text_encoder_outputs(self, facts: ModelFacts, dims: "Dims") -> tuple[TensorSpec, ...]:
        return (TensorSpec("text_embeddings", torch.float32, (dims.strings, dims.tokens, dims.text_width)),)

    def _unet_added_inputs(self, facts: ModelFacts, dims: "Dims") -> tuple[TensorSpec, ...]:
        return ()

    def torch_module(self, model: StableDiffusionModel, component: str, role: str = "values") -> nn.Module:
        """The module of ``component`` whose forward takes its contract's inputs in order. The UNet's
        is ``role``'s structured UNet over the model's own, which gets the structured processor."""
        if component == "unet":
            return StructuredUNet(model.unet, role, added=self.added_conditions)
        if component == "text_encoder":
            return self._text_encoder_module(model)
        if component == "vae_decoder":
            return LatentDecoder(model.vae)
        raise ValueError(f"a component is one of {', '.join(COMPONENTS)}, not {component!r}")

    def torch_modules(self, model: StableDiffusionModel, role: str) -> dict[str, nn.Module]:
        return {component: self.torch_module(model, component, role) for component in COMPONENTS}

    def _text_encoder_module(self, model: StableDiffusionModel) -> nn.Module:
        return TextEmbeddings(model.text_encoder)

    def encode_texts(self, network: Any, tokenizers: tuple, texts: list[str],
                     facts: ModelFacts) -> tuple[torch.Tensor, None]:
        return network(input_ids=token_ids(tokenizers[0], texts))["text_embeddings"], None

    def unet_inputs(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: Any, mode: str,
                    facts: ModelFacts) -> dict[str, torch.Tensor]:
        """The UNet's named inputs for one step; the stacked levels go in under their role's name."""
        return {"sample": sample, "timestep": timestep, "encoder_hidden_states": conditioning.encoder_hidden_states,
                role_named(mode).level_input: conditioning.level_states, "level_mask": conditioning.level_mask}

    def cross_attention_count(self, model: StableDiffusionModel) -> int:
        return sum(1 for name, _ in model.unet.named_modules() if name.endswith("attn2"))


FAMILY = StableDiffusion1()
