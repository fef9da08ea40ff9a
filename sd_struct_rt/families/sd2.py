"""Stable Diffusion 2.x: SD 1.x's three networks with OpenCLIP's text encoder (width 1024 for the
real models), ``attention_head_dim`` lists and linear projections in the UNet, a tokenizer that
pads with id 0 (``!``), and epsilon or v-prediction schedulers, all read from the folder.

None of that changes the engine I/O or the structure (SPEC 2-5): spans, alignment and levels are
SD 1.x's, and the pad id cannot leak into an alignment because only a phrase's own token
positions are copied (SPEC 3.2). The scheduler's ``prediction_type`` travels with its config, so
v-prediction folders sample correctly with every listed scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .sd1 import StableDiffusion1, _openclip_text_encoder


class StableDiffusion2(StableDiffusion1):
    name = "sd2"
    title = "Stable Diffusion 2.x"

    def claims(self, model_index: Mapping[str, Any], folder: Path) -> bool:
        return model_index.get("_class_name") == "StableDiffusionPipeline" and _openclip_text_encoder(folder)


FAMILY = StableDiffusion2()
