"""What a generation runs on: backends plus the tokenizer and scheduler that go with them."""

from __future__ import annotations

from dataclasses import dataclass

from .generate import Backends
from .manifest import Profile


@dataclass
class Runtime:
    backends: Backends
    tokenizer: object
    scheduler: object
    model_id: str
    default_size: int
    vae_scale_factor: int
    profile: Profile | None = None  # the shapes a compiled engine set accepts; None: any


def torch_runtime(model_ref: str, mode: str) -> Runtime:
    """The torch reference on the CPU (or the first CUDA device once moved there by the caller)."""
    from .backends.torch_backend import TorchTextEncoder, TorchUNet, TorchVAEDecoder
    from .model import load_model

    model = load_model(model_ref)
    backends = Backends("torch", TorchTextEncoder(model.text_encoder),
                        TorchUNet(model.unet, "keys" if mode == "keys" else "values"),
                        TorchVAEDecoder(model.vae))
    return Runtime(backends, model.tokenizer, model.scheduler, model.model_id, model.default_size,
                   model.vae_scale_factor)
