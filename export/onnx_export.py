"""The three networks of the pipeline as ONNX graphs with the names and axes of SPEC section 5.

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

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
import torch
from torch import nn

from sd_struct_rt.attention import MODES, StructuredUNet
from sd_struct_rt.backends import LEVEL_INPUTS
from sd_struct_rt.backends.onnxruntime_backend import IMAGE_SCALE_METADATA
from sd_struct_rt.backends.torch_backend import LatentDecoder
from sd_struct_rt.model import StableDiffusionModel

EXPORTER = "torchscript"
OPSET = 17
TEXT_LENGTH = 77


class _TextEmbeddings(nn.Module):
    """``int32`` token ids in, last hidden states out (the pooled output is not exported)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.long()).last_hidden_state


def _parameter_like(module: nn.Module) -> dict:
    parameter = next(module.parameters())
    return {"dtype": parameter.dtype, "device": parameter.device}


def _example(*shape: int, like: dict, generator: torch.Generator) -> torch.Tensor:
    # A private generator: exporting must not move the caller's global random state.
    return torch.randn(*shape, generator=generator).to(**like)


def export_unet(model: StableDiffusionModel, mode: str, folder: Path, *, opset: int = OPSET,
                name: str = "unet") -> Path:
    """Export the model's UNet with structured cross-attention in ``mode``.

    Inputs ``sample [N,4,h,w]``, ``timestep [N] int64``, ``encoder_hidden_states [N,77,D]``,
    ``value_states`` or ``key_states [N,L,77,D]``, ``level_mask [N,L]``; output
    ``noise_pred [N,4,h,w]``. ``h`` and ``w`` must be multiples of 8 (the UNet downsamples
    three times). Returns the path of ``<folder>/<name>.onnx``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    unet = model.unet
    like = _parameter_like(unet)
    width = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    # Example sizes differ from each other and from 1, so no axis is confused with another
    # or broadcast; 16x24 latents keep tracing a real UNet cheap.
    batch, levels, height, latent_width = 2, 3, 16, 24
    inputs = {
        "sample": _example(batch, 4, height, latent_width, like=like, generator=generator),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator).to(like["device"]),
        "encoder_hidden_states": _example(batch, TEXT_LENGTH, width, like=like, generator=generator),
        LEVEL_INPUTS[mode]: _example(batch, levels, TEXT_LENGTH, width, like=like, generator=generator),
        "level_mask": torch.ones(batch, levels, **like),
    }
    dynamic_axes = {
        "sample": {0: "N", 2: "h", 3: "w"},
        "timestep": {0: "N"},
        "encoder_hidden_states": {0: "N"},
        LEVEL_INPUTS[mode]: {0: "N", 1: "L"},
        "level_mask": {0: "N", 1: "L"},
        "noise_pred": {0: "N", 2: "h", 3: "w"},
    }
    processors = unet.attn_processors
    try:
        return _export(StructuredUNet(unet, mode).eval(), inputs, "noise_pred", dynamic_axes,
                       folder / f"{name}.onnx", opset, metadata={})
    finally:
        unet.set_attn_processor(processors)  # StructuredUNet swapped them; the caller's UNet stays as it was


def export_text_encoder(model: StableDiffusionModel, folder: Path, *, opset: int = OPSET,
                        name: str = "text_encoder") -> Path:
    """Export the CLIP text encoder: ``input_ids int32 [M,77]`` -> ``text_embeddings [M,77,D]``."""
    text_encoder = model.text_encoder
    device = _parameter_like(text_encoder)["device"]
    vocabulary = text_encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, vocabulary, (2, TEXT_LENGTH), generator=generator,
                                         dtype=torch.int32).to(device)}
    dynamic_axes = {"input_ids": {0: "M"}, "text_embeddings": {0: "M"}}
    return _export(_TextEmbeddings(text_encoder).eval(), inputs, "text_embeddings", dynamic_axes,
                   folder / f"{name}.onnx", opset, metadata={})


def export_vae_decoder(model: StableDiffusionModel, folder: Path, *, opset: int = OPSET,
                       name: str = "vae_decoder") -> Path:
    """Export the VAE decoder with latent scaling: ``latent [N,4,h,w]`` -> ``images [N,3,8h,8w]`` in [0, 1]."""
    vae = model.vae
    like = _parameter_like(vae)
    scale = model.vae_scale_factor
    inputs = {"latent": _example(2, vae.config.latent_channels, 16, 24, like=like,
                                 generator=torch.Generator().manual_seed(0))}
    dynamic_axes = {"latent": {0: "N", 2: "h", 3: "w"}, "images": {0: "N", 2: f"{scale}h", 3: f"{scale}w"}}
    return _export(LatentDecoder(vae).eval(), inputs, "images", dynamic_axes, folder / f"{name}.onnx", opset,
                   metadata={IMAGE_SCALE_METADATA: str(scale)})


def graph_files(graph: Path) -> list[Path]:
    """The graph file and every external data file it references, for the manifest."""
    proto = onnx.load(str(graph), load_external_data=False)
    locations = {entry.value for tensor in proto.graph.initializer
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return [graph, *(graph.parent / location for location in sorted(locations))]


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, dynamic_axes: dict,
            destination: Path, opset: int, metadata: dict[str, str]) -> Path:
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
                              opset_version=opset, input_names=list(inputs), output_names=[output],
                              dynamic_axes=dynamic_axes)
        model = ir.load(traced)
        _clean(model)
        model.metadata_props.update(metadata)
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
