"""PNG output with the generation's settings as text metadata."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import atomic_path


def save_png(image: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """Write one ``[3, H, W]`` uint8 image; ``metadata`` becomes PNG text chunks."""
    info = PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value))
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG", pnginfo=info)


def read_png_metadata(path: Path) -> dict[str, str]:
    with Image.open(path) as picture:
        return dict(picture.text)
