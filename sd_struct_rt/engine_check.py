"""``sdrt check-engine``: an engine set against the torch reference, through Polygraphy.

Each network of each backend is wrapped as a Polygraphy runner, so Polygraphy's ``Comparator``
feeds both the same fresh random inputs, and ``Comparator.compare_accuracy`` judges every output
with ``SpecGate``, our ``compare_func``: SPEC section 7's relative error for float32 engines and
cosine similarity for reduced precision. Its verdict is the command's verdict.

Inputs come from the network's contract at the two corners of the engine profile: the
smallest call (one prompt, one level, the smallest size) and the largest (every prompt of the
largest batch, rows with different level counts, the largest size).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .backends import Network
from .contract import Axis, NetworkContract, Profile
from .errors import UserError
from .families import COMPONENTS

FLOAT32_MAX_RELATIVE_ERROR = 1e-4
REDUCED_PRECISION_MIN_COSINE = 0.999
# A whole generation, engines against torch, same seed: float32 sets agree far beyond this (about
# 90 dB on tiny); reduced precision must stay within SPEC 7's 30 dB.
FLOAT32_MIN_IMAGE_PSNR = 35.0
REDUCED_PRECISION_MIN_IMAGE_PSNR = 30.0
IMAGE_CHECK = {"prompt": "a red car and a white sheep", "seed": 0, "num_inference_steps": 20}


@dataclass(frozen=True)
class GateResult:
    """One output's verdict under SPEC 7; true when it passes, as Polygraphy expects of a result."""

    relative_error: float
    cosine: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed


class SpecGate:
    """A Polygraphy ``compare_func``: relative error <= 1e-4 for fp32, cosine >= 0.999 otherwise."""

    def __init__(self, precision: str):
        self.precision = precision

    def __call__(self, reference, candidate) -> OrderedDict:
        verdicts = OrderedDict()
        for name in reference.keys():
            x = np.asarray(reference[name], dtype=np.float64).ravel()
            y = np.asarray(candidate[name], dtype=np.float64).ravel()
            relative = float(np.linalg.norm(y - x) / np.linalg.norm(x))
            cosine = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
            passed = (relative <= FLOAT32_MAX_RELATIVE_ERROR if self.precision == "fp32"
                      else cosine >= REDUCED_PRECISION_MIN_COSINE)
            verdicts[name] = GateResult(relative, cosine, bool(passed))
        return verdicts


@dataclass(frozen=True)
class CheckRow:
    component: str
    shape: str
    relative_error: float
    cosine: float
    passed: bool
    psnr: float | None = None  # for the final-image row


def image_psnr(first, second) -> float:
    a, b = (np.asarray(image, dtype=np.float64) for image in (first, second))
    error = float(((a - b) ** 2).mean())
    return float("inf") if error == 0 else float(10 * np.log10(255 ** 2 / error))


def compare_images(reference, engines, precision: str) -> CheckRow:
    """One whole generation on both pipelines at the profile's smallest call, judged by PSNR."""
    manifest = engines.engine_set.manifest
    side = manifest.profile.size[0]
    request = {**IMAGE_CHECK, "width": side, "height": side, "mode": manifest.mode}
    expected, got = (pipe(**request).images[0] for pipe in (reference, engines))
    psnr = image_psnr(expected, got)
    floor = FLOAT32_MIN_IMAGE_PSNR if precision == "fp32" else REDUCED_PRECISION_MIN_IMAGE_PSNR
    x, y = (np.asarray(image, dtype=np.float64).ravel() for image in (expected, got))
    return CheckRow("image", f"{request['num_inference_steps']} steps {side}x{side} seed {request['seed']}",
                    float(np.linalg.norm(y - x) / np.linalg.norm(x)),
                    float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))), psnr >= floor, psnr)


def _runner(name: str, network: Network):
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class NetworkRunner(BaseRunner):
        """One of our networks (named torch tensors in and out) as a Polygraphy runner."""

        def __init__(self):
            super().__init__(name=name)

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            # Polygraphy hands a runner only the feeds it declares; shapes are dynamic.
            metadata = TensorMetadata()
            for spec in network.contract.inputs:
                metadata.add(spec.name, np.dtype(str(spec.dtype).removeprefix("torch.")), [-1] * len(spec.dims))
            return metadata

        def infer_impl(self, feed_dict):
            inputs = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in feed_dict.items()}
            start = time.perf_counter()
            outputs = {key: np.ascontiguousarray(value.float().cpu().numpy())
                       for key, value in network(**inputs).items()}
            self.inference_time = time.perf_counter() - start
            return OrderedDict(outputs)

    return NetworkRunner()


def profile_corners(contract: NetworkContract, profile: Profile) -> list[dict[str, int]]:
    """Axis sizes of the smallest and the largest call the profile admits."""
    ranges = contract.axis_ranges(profile)
    return [{symbol: triple[corner] for symbol, triple in ranges.items()} for corner in (0, 2)]


def _described(contract: NetworkContract, sizes: Mapping[str, int]) -> str:
    axes = {dim.symbol: dim for spec in contract.inputs for dim in spec.dims if isinstance(dim, Axis)}
    return " ".join(f"{axes[symbol].label}={size}" for symbol, size in sizes.items())


def compare_networks(reference: Network, candidate: Network, profile: Profile, precision: str,
                     generator: torch.Generator) -> tuple[list[CheckRow], bool]:
    """Rows of SPEC 7 verdicts for one network at the profile's corners, and Polygraphy's overall verdict."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    contract = reference.contract
    corners = profile_corners(contract, profile)
    feeds = [{name: tensor.numpy() for name, tensor in contract.sample_inputs(generator, sizes).items()}
             for sizes in corners]
    results = Comparator.run([_runner("torch", reference), _runner("engine", candidate)], data_loader=feeds)
    accuracy = Comparator.compare_accuracy(results, compare_func=SpecGate(precision))
    (iterations,) = accuracy[0].values()  # one runner pair
    rows = [CheckRow(contract.name, _described(contract, sizes), verdict.relative_error, verdict.cosine,
                     bool(verdict))
            for sizes, verdicts in zip(corners, iterations) for verdict in verdicts.values()]
    return rows, bool(accuracy)


def check_engine_set(folder: Path, seed: int = 0) -> tuple[list[CheckRow], bool]:
    """Compare every engine of ``folder`` with the torch reference of the model it was built from,
    network by network (through Polygraphy) and on one whole generation."""
    from .export.build import weights_sha256
    from .manifest import read_manifest
    from .model import resolve_model_folder
    from .pipeline import StructuredDiffusionPipeline

    manifest = read_manifest(folder)
    engines = StructuredDiffusionPipeline.from_engines(folder)
    if weights_sha256(resolve_model_folder(manifest.model_id)) != manifest.weights_sha256:
        raise UserError(f"the weights of model {manifest.model_id!r} differ from those {folder} was built "
                        "from; point check-engine at the same model or rebuild the engines")
    reference = StructuredDiffusionPipeline.from_pretrained(manifest.model_id, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    rows, passed = [], True
    for component in COMPONENTS:
        component_rows, component_passed = compare_networks(
            reference.networks.component(component, manifest.mode),
            engines.networks.component(component, manifest.mode), manifest.profile, manifest.precision, generator)
        rows += component_rows
        passed = passed and component_passed
    rows.append(compare_images(reference, engines, manifest.precision))
    return rows, passed and rows[-1].passed
