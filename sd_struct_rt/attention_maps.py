"""Cross-attention heatmaps, per token and per phrase, as overlays on the generated image.

A map is where a text position's cross-attention went: ``AttentionRecorder`` averages the
conditional rows' probabilities over heads, key levels, the cross-attention layers asked for
(all by default; each resampled to the latent grid) and every step. A phrase's map is the mean
of its tokens' maps.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .files import reporting, write_bytes_atomically
from .structure.spans import StructuredPrompt
from .text import tokenize_with_offsets


def heat_on(image: Image.Image, heat: np.ndarray, opacity: float = 0.55) -> Image.Image:
    """``heat`` (any 2-D grid) stretched to [0, 1], resized to the image, blended in as 'hot'."""
    heat = heat - heat.min()
    heat = heat / heat.max() if heat.max() > 0 else heat
    resized = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)) / 255.0
    colours = np.stack([np.clip(3 * resized, 0, 1), np.clip(3 * resized - 1, 0, 1), np.clip(3 * resized - 2, 0, 1)],
                       axis=-1)
    blended = (1 - opacity) * np.asarray(image.convert("RGB")) / 255.0 + opacity * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def heat_centroid(heat: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """The heat-weighted centre of a map, in the pixels of an image of ``size`` (width, height)."""
    weights = np.clip(heat - heat.mean(), 0, None)  # what stands out, not the uniform floor
    if weights.sum() == 0:
        weights = np.ones_like(heat)
    rows, columns = np.indices(heat.shape)
    scale_x, scale_y = size[0] / heat.shape[1], size[1] / heat.shape[0]
    return (float((columns + 0.5).ravel() @ weights.ravel() / weights.sum() * scale_x),
            float((rows + 0.5).ravel() @ weights.ravel() / weights.sum() * scale_y))


def named_maps(maps: torch.Tensor, prompt: StructuredPrompt, tokenizer) -> dict[str, np.ndarray]:
    """``token <i> <text>`` for each content token the text encoder read, ``phrase <text>`` for each level."""
    tokens = tokenize_with_offsets(tokenizer, prompt.prompt).tokens[:maps.shape[0] - 2]
    grid = maps.numpy()
    named = {f"token {index} {token.removesuffix('</w>')}": grid[index + 1] for index, token in enumerate(tokens)}
    for span in prompt.spans:  # positions s+1 .. e: BOS is position 0
        named[f"phrase {span.text}"] = grid[span.start + 1:span.end + 1].mean(axis=0)
    return named


def write_attention_maps(folder: Path, stem: str, image: Image.Image, maps: dict[str, np.ndarray],
                         downsampling: Sequence[int] | None = None) -> list[Path]:
    """One PNG overlay per map and ``<stem>-attention.json`` in ``folder``: the cross-attention
    layers averaged (by ``downsampling``; null when unknown) and each map's file and heat centroid."""
    with reporting("create the attention-map folder", folder):
        folder.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    try:
        for number, (name, heat) in enumerate(maps.items()):
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50]
            path = folder / f"{stem}-{number:02d}-{slug}.png"
            encoded = io.BytesIO()
            heat_on(image, heat).save(encoded, format="PNG")
            existed = path.exists()
            write_bytes_atomically(path, encoded.getvalue(), "attention map")
            index[name] = {"file": path.name, "centroid_xy": heat_centroid(heat, image.size)}
            written.append((path, existed))
        listing = folder / f"{stem}-attention.json"
        contents = {"cross_attention_downsampling": None if downsampling is None else list(downsampling),
                    "maps": index}
        write_bytes_atomically(listing, (json.dumps(contents, indent=1) + "\n").encode(), "attention-map index")
    except BaseException:
        for path, existed in written:  # the maps this call made: a failed call leaves none of them
            if not existed:
                path.unlink(missing_ok=True)
        raise
    return [*(path for path, _ in written), listing]
