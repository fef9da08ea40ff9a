"""PNG output with the generation's settings as text metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import atomic_path, reporting


def to_pil(image: torch.Tensor) -> Image.Image:
    """One ``[3, H, W]`` uint8 tensor as a PIL image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def save_png(picture: Image.Image, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``picture`` with ``metadata`` as PNG text chunks; the file appears only when complete."""
    info = PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value))
    with atomic_path(path, "image") as temporary, reporting("write image", path):
        picture.save(temporary, format="PNG", pnginfo=info)


def read_png_metadata(path: Path) -> dict[str, str]:
    with Image.open(path) as picture:
        return dict(picture.text)
