"""GPU checks: they run where CUDA is present and skip, saying why, everywhere else."""

import numpy as np
import pytest
import torch
from PIL import Image

from sd_struct_rt.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_torch_cuda_backend_matches_the_cpu_reference(tmp_path):
    from sd_struct_rt import StructuredDiffusionPipeline

    common = ["a red car and a white sheep", "--steps", "3", "--width", "64", "--height", "64", "--quiet"]
    assert main(["generate", *common, "--out", str(tmp_path / "gpu.png")]) == 0  # auto: CUDA here
    cpu = StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")
    cpu("a red car and a white sheep", num_inference_steps=3, width=64, height=64).save(0, tmp_path / "cpu.png")
    with Image.open(tmp_path / "gpu.png") as a, Image.open(tmp_path / "cpu.png") as b:
        assert a.text["backend"] == "torch-cuda"
        error = ((np.asarray(a).astype(float) - np.asarray(b).astype(float)) ** 2).mean()
    assert error == 0 or 10 * np.log10(255 ** 2 / error) >= 35
