"""The networks of a model family as ONNX graphs, named and shaped by their contracts (SPEC 5).

Exporter and opset, chosen deliberately:

* **TorchScript exporter** (``torch.onnx.export(..., dynamo=False)``), not the default
  ``torch.export``-based one (which needs opset >= 18). With dynamic ``N``, ``L``, ``h`` and
  ``w`` the dynamo exporter reasons symbolically (sympy) about every shape in the UNet:
  measured on a 2-core box with torch 2.13, about 70 s for the tiny UNet and 11 s for the tiny
  VAE, against 5 s and 0.5 s traced. Both give the same computation; the parity tests run
  the traced graphs at shapes other than the traced ones, which is what catches a size frozen
  by tracing. The TorchScript exporter is deprecated since torch 2.9 but present in every
  torch this package supports; its deprecation warning is silenced here because the choice
  is deliberate.
* **opset 17**: the lowest opset with a native ``LayerNormalization`` (TensorRT maps it onto
  its normalization layer instead of a ReduceMean/Pow/Sqrt chain that overflows in fp16), and
  inside the opset range 9..20 that TensorRT 10's ONNX parser accepts. GroupNorm is lowered
  through ``InstanceNormalization``, which the parser supports natively, avoiding opset 18's
  ``GroupNormalization`` whose scale/bias shape was redefined in opset 21.
* ``scaled_dot_product_attention`` lowers to ``Mul(Q, sqrt(s))``, ``Mul(K^T, sqrt(s))``,
  ``MatMul``, ``Softmax``, ``MatMul``: nothing between Softmax and the second MatMul, the
  shape TensorRT fuses (checked by ``graph_checks.check_fusable_cross_attention``).

Every graph is then cleaned with the onnxscript constant folder and onnx_ir passes (identity
removal, constants lifted to initializers, deduplication, common subexpressions), checked by
strict ONNX shape inference and the full checker, and always saved with external data as
``<name>.onnx`` + ``<name>.onnx.data``: a float32 SD 1.x UNet exceeds protobuf's 2 GB.
onnxscript's default rewrite rules are not run: one of them (slice-to-split) matches in
quadratic time and took 24 s on the tiny UNet for no benefit to TensorRT or ONNX Runtime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
import torch
from torch import nn

from ..attention import processors_kept
from ..contract import NetworkContract
from ..families import COMPONENTS, Family

EXPORTER = "torchscript"
OPSET = 17


def export_network(module: nn.Module, contract: NetworkContract, destination: Path, *, opset: int = OPSET) -> Path:
    """Trace ``module`` (whose forward takes the contract's inputs in order) to ``destination``.

    The graph gets the contract's input and output names and dynamic axes; the sample inputs
    give every axis a different size, so no axis is confused with another or broadcast.
    """
    parameter = next(module.parameters())
    # A private generator: exporting must not move the caller's global random state.
    inputs = {name: tensor.to(parameter.device, parameter.dtype if tensor.is_floating_point() else tensor.dtype)
              for name, tensor in contract.sample_inputs(torch.Generator().manual_seed(0)).items()}
    return _export(module.eval(), inputs, contract.output_names, contract.dynamic_axes(), destination, opset)


def export_graphs(model: Any, family: Family, mode: str, folder: Path,
                  stage: Callable[[str], None] = lambda name: None) -> dict[str, Path]:
    """``<folder>/<component>.onnx`` (and its ``.data``) for every component, the UNet in ``mode``.
    The model is the caller's: its UNet keeps its own attention processors."""
    contracts = family.networks(model.facts, mode)
    with processors_kept(model.unet):
        modules = family.torch_modules(model, mode)
        graphs = {}
        for component in COMPONENTS:
            stage(f"exporting the {component.replace('_', ' ')}{f' ({mode} mode)' if component == 'unet' else ''} "
                  "to ONNX")
            graphs[component] = export_network(modules[component], contracts[component],
                                               folder / f"{component}.onnx")
    return graphs


def graph_files(graph: Path) -> list[Path]:
    """The graph file and every external data file it references, for the manifest."""
    proto = onnx.load(str(graph), load_external_data=False)
    locations = {entry.value for tensor in proto.graph.initializer
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return [graph, *(graph.parent / location for location in sorted(locations))]


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], dynamic_axes: dict,
            destination: Path, opset: int) -> Path:
    """Trace, clean, verify and save ``module`` to ``destination`` and its ``.data`` beside it.

    Everything is written inside a staging folder next to the destination and renamed into
    place only once complete, data first, so a graph never names data that is not there.
    """
    folder = destination.parent
    folder.mkdir(parents=True, exist_ok=True)
    data_name = f"{destination.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=folder))
    try:
        # The tracer writes a >2 GB model as one file per tensor, hence its own folder.
        traced = staging / "traced" / destination.name
        traced.parent.mkdir()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            # Shape-dependent Python branches in diffusers/transformers warn while tracing;
            # the parity tests at untraced shapes are the guard against a frozen size.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, tuple(inputs.values()), str(traced), dynamo=False,
                              opset_version=opset, input_names=list(inputs), output_names=outputs,
                              dynamic_axes=dynamic_axes)
        model = ir.load(traced)
        _clean(model)
        staged = staging / destination.name
        ir.save(model, staged, external_data=data_name)
        onnx.shape_inference.infer_shapes_path(str(staged), str(staged), check_type=True, strict_mode=True,
                                               data_prop=True)
        onnx.checker.check_model(str(staged), full_check=True)
        destination.unlink(missing_ok=True)
        if (staging / data_name).exists():
            os.replace(staging / data_name, folder / data_name)
        else:  # every tensor was small enough to stay inline; no stale data may remain
            (folder / data_name).unlink(missing_ok=True)
        os.replace(staged, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _clean(model: ir.Model) -> None:
    onnxscript.optimizer.fold_constants(model)
    ir.passes.Sequential(
        common_passes.IdentityEliminationPass(),
        common_passes.RemoveUnusedNodesPass(),
        # TensorRT wants axes, pads and shapes as initializers, not Constant nodes.
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedOpsetsPass(),
    )(model)
