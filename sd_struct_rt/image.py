"""PNG output with the generation's settings as text metadata."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import write_bytes_atomically


def to_pil(image: torch.Tensor) -> Image.Image:
    """One ``[3, H, W]`` uint8 tensor as a PIL image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def png_bytes(picture: Image.Image, metadata: Mapping[str, str]) -> bytes:
    """``picture`` as PNG bytes with ``metadata`` as text chunks."""
    info = PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value))
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG", pnginfo=info)
    return encoded.getvalue()


def save_png(picture: Image.Image, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``picture`` with ``metadata`` as a PNG; the file appears only when complete."""
    write_bytes_atomically(path, png_bytes(picture, metadata), "image")


def read_png_metadata(path: Path) -> dict[str, str]:
    with Image.open(path) as picture:
        return dict(picture.text)
