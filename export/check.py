"""``sdrt check-engine``: an engine set against the torch reference, through Polygraphy.

Each backend is wrapped as a Polygraphy runner, so Polygraphy's ``Comparator`` feeds both the
same fresh random inputs and compares every output; on top of its element-wise report we
apply the SPEC section 7 gates: relative error for float32 engines, cosine similarity for
reduced precision.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sd_struct_rt.errors import UserError
from sd_struct_rt.manifest import SIZE_STEP, Manifest

FLOAT32_MAX_RELATIVE_ERROR = 1e-4
REDUCED_PRECISION_MIN_COSINE = 0.999


@dataclass(frozen=True)
class CheckRow:
    component: str
    shape: str
    relative_error: float
    cosine: float
    passed: bool


def _runner(name: str, call: Callable[..., torch.Tensor], output: str, example: dict[str, np.ndarray]):
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class BackendRunner(BaseRunner):
        """One of our backends (named torch tensors in, one tensor out) as a Polygraphy runner."""

        def __init__(self):
            super().__init__(name=name)

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            # Polygraphy hands a runner only the feeds it declares; shapes are dynamic.
            metadata = TensorMetadata()
            for key, value in example.items():
                metadata.add(key, value.dtype, [-1] * value.ndim)
            return metadata

        def infer_impl(self, feed_dict):
            inputs = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in feed_dict.items()}
            start = time.perf_counter()
            result = np.ascontiguousarray(call(**inputs).float().cpu().numpy())
            self.inference_time = time.perf_counter() - start
            return OrderedDict({output: result})

    return BackendRunner()


def _unet_feeds(manifest: Manifest, generator: torch.Generator) -> list[dict[str, np.ndarray]]:
    profile, width = manifest.profile, manifest.model_config["text_width"]
    scale = manifest.model_config["vae_scale_factor"]
    low = profile.size[0] // scale
    high = min(profile.size[1], max(profile.size[0], 2 * SIZE_STEP)) // scale
    feeds = []
    # one prompt with one level at the smallest size, then the largest batch with rows of
    # different level counts at another size
    for rows, counts, side in ((2 * profile.batch[0], [1] * (2 * profile.batch[0]), low),
                               (2 * profile.batch[1], None, high)):
        levels = profile.levels
        counts = counts or [1 + (row % levels) for row in range(rows)]
        mask = torch.tensor([[1.0 if i < n else 0.0 for i in range(max(counts))] for n in counts])
        feeds.append({
            "sample": torch.randn(rows, 4, side, side, generator=generator).numpy(),
            "timestep": torch.randint(0, 1000, (rows,), generator=generator).numpy(),
            "encoder_hidden_states": torch.randn(rows, 77, width, generator=generator).numpy(),
            "level_states": torch.randn(rows, mask.shape[1], 77, width, generator=generator).numpy(),
            "level_mask": mask.numpy(),
        })
    return feeds


def _compare(component: str, reference, engine, output: str, feeds, precision: str) -> list[CheckRow]:
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    runners = [_runner("torch", reference, output, feeds[0]), _runner("engine", engine, output, feeds[0])]
    results = Comparator.run(runners, data_loader=feeds)
    # Polygraphy's element-wise comparison, loose: the gates below are the contract.
    Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=1e-2, atol=1e-2))
    (_, reference_iterations), (_, engine_iterations) = results.items()
    rows = []
    for feed, expected, got in zip(feeds, reference_iterations, engine_iterations):
        x, y = expected[output].astype(np.float64).ravel(), got[output].astype(np.float64).ravel()
        relative = float(np.linalg.norm(y - x) / np.linalg.norm(x))
        cosine = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
        passed = (relative <= FLOAT32_MAX_RELATIVE_ERROR if precision == "fp32"
                  else cosine >= REDUCED_PRECISION_MIN_COSINE)
        shape = " ".join(f"{name}={list(value.shape)}" for name, value in feed.items()
                         if name in ("input_ids", "sample", "level_states", "latent"))
        rows.append(CheckRow(component, shape, relative, cosine, passed))
    return rows


def check_engine_set(folder: Path, seed: int = 0) -> list[CheckRow]:
    """Compare every engine of ``folder`` with the torch reference of the model it was built from."""
    from sd_struct_rt.backends.torch_backend import TorchTextEncoder, TorchUNet, TorchVAEDecoder
    from sd_struct_rt.manifest import read_manifest
    from sd_struct_rt.model import load_model, resolve_model_folder
    from sd_struct_rt.runtime import engine_runtime

    from .build import weights_sha256

    manifest = read_manifest(folder)
    runtime = engine_runtime(folder, manifest.mode)
    if weights_sha256(resolve_model_folder(manifest.model_id)) != manifest.weights_sha256:
        raise UserError(f"the weights of model {manifest.model_id!r} differ from those {folder} was built "
                        "from; point check-engine at the same model or rebuild the engines")
    model = load_model(manifest.model_id)
    generator = torch.Generator().manual_seed(seed)
    vocabulary = model.text_encoder.config.vocab_size
    text_feeds = [{"input_ids": torch.randint(0, vocabulary, (count, 77), generator=generator,
                                              dtype=torch.int32).numpy()} for count in (1, 3)]
    unet_feeds = _unet_feeds(manifest, generator)
    latent_side = manifest.profile.size[0] // manifest.model_config["vae_scale_factor"]
    vae_feeds = [{"latent": torch.randn(count, 4, latent_side, latent_side, generator=generator).numpy()}
                 for count in (1, manifest.profile.batch[1])]
    reference_unet = TorchUNet(model.unet, manifest.mode)
    return (_compare("text_encoder", TorchTextEncoder(model.text_encoder), runtime.backends.text_encoder,
                     "text_embeddings", text_feeds, manifest.precision)
            + _compare("unet", reference_unet, runtime.backends.unet, "noise_pred", unet_feeds, manifest.precision)
            + _compare("vae_decoder", TorchVAEDecoder(model.vae), runtime.backends.vae, "images", vae_feeds,
                       manifest.precision))
