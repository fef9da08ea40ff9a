"""Shared fixtures: the embedded tiny model, loaded once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny():
    from sd_struct_rt.model import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory):
    """An ONNX Runtime engine set of tiny (values mode), built once per session through the CLI."""
    pytest.importorskip("onnxruntime")
    from sd_struct_rt.cli import main

    folder = tmp_path_factory.mktemp("sets") / "tiny"
    assert main(["build-engine", "--model", "tiny", "--backend", "onnxruntime", "--batch", "1:2",
                 "--size", "64:128", "--levels", "4", "--quiet", "--out", str(folder)]) == 0
    return folder


@pytest.fixture
def fresh_generator():
    """A seeded generator per test: fresh random inputs that still reproduce on failure."""
    return torch.Generator().manual_seed(1234)


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference.double()).norm() / reference.double().norm())


def pixels(image):
    """An image (PIL, an array, or a path to a PNG) as an int array."""
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        return image.astype(int)
    if isinstance(image, Image.Image):
        return np.asarray(image).astype(int)
    with Image.open(image) as picture:
        return np.asarray(picture).astype(int)


def psnr(a, b) -> float:
    import numpy as np

    error = ((pixels(a) - pixels(b)) ** 2).mean()
    return float("inf") if error == 0 else float(10 * np.log10(255 ** 2 / error))
