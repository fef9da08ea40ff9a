"""What a generation runs on: backends plus the tokenizer and scheduler that go with them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .generate import Backends
from .manifest import Manifest


@dataclass
class Runtime:
    backends: Backends
    tokenizer: object
    scheduler: object
    model_id: str
    default_size: int
    vae_scale_factor: int
    text_width: int
    manifest: Manifest | None = None  # for compiled engines: what they accept; None: anything


def torch_runtime(model_ref: str, mode: str, device: str = "auto", half: bool = False) -> Runtime:
    """The torch reference: CUDA when there is a GPU (``auto``), else the CPU; ``half`` for fp16."""
    import torch

    from .backends.torch_backend import TorchTextEncoder, TorchUNet, TorchVAEDecoder, resolve_device
    from .errors import UserError
    from .model import load_model

    where = resolve_device(device)
    if half and where.type != "cuda":
        raise UserError("float16 needs a CUDA device; the CPU reference runs in float32")
    dtype = torch.float16 if half else torch.float32
    model = load_model(model_ref)
    backends = Backends(f"torch-{where.type}" + ("-fp16" if half else ""),
                        TorchTextEncoder(model.text_encoder, where, dtype),
                        TorchUNet(model.unet, "keys" if mode == "keys" else "values", where, dtype),
                        TorchVAEDecoder(model.vae, where, dtype))
    return Runtime(backends, model.tokenizer, model.scheduler, model.model_id, model.default_size,
                   model.vae_scale_factor, model.text_encoder.config.hidden_size)


ENGINE_BACKENDS = ("onnxruntime", "tensorrt")


def tensorrt_usable() -> bool:
    """TensorRT imports and a CUDA device is present: the only case where it can run."""
    import importlib.util

    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def best_engine_backend() -> str:
    return "tensorrt" if tensorrt_usable() else "onnxruntime"


def engine_runtime(folder: Path, mode: str) -> Runtime:
    """Backends over a built engine set, after the manifest and every file hash check out."""
    from transformers import CLIPTokenizer

    from .manifest import expect, read_manifest, verify_files

    manifest = read_manifest(folder)
    expect(manifest, folder, mode="keys" if mode == "keys" else "values")
    verify_files(manifest, folder)
    paths = {component: folder / name for component, name in manifest.engine_files.items()}
    if manifest.backend == "onnxruntime":
        from .backends.onnxruntime_backend import OrtTextEncoder, OrtUNet, OrtVAEDecoder

        unet = OrtUNet(paths["unet"])
        name = f"onnxruntime-{unet.graph.device.type}"
        backends = Backends(name, OrtTextEncoder(paths["text_encoder"], unet.graph.device.type), unet,
                            OrtVAEDecoder(paths["vae_decoder"], unet.graph.device.type))
    else:
        from .backends.tensorrt_backend import TrtTextEncoder, TrtUNet, TrtVAEDecoder

        backends = Backends("tensorrt", TrtTextEncoder(paths["text_encoder"]),
                            TrtUNet(paths["unet"], manifest.mode), TrtVAEDecoder(paths["vae_decoder"]))
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    import diffusers

    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    config = manifest.model_config
    return Runtime(backends, CLIPTokenizer.from_pretrained(folder / "tokenizer"), scheduler,
                   manifest.model_id, config["default_size"], config["vae_scale_factor"], config["text_width"],
                   manifest)
