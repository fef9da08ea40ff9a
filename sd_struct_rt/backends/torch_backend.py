"""The torch reference backend: the source of truth every compiled engine must match.

It runs the family's torch modules (the very modules the export stage traces) from a loaded
model. On the CPU it runs in float32; on a CUDA device also in float16, which is how a GPU
serves SD in production. Inputs may come from anywhere and are moved to the backend's device;
outputs stay there (the pipeline brings back what it needs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modes import ROLES, VALUES
from ..contract import NetworkContract
from ..errors import UserError
from . import ContractNetwork, Networks

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"device must be auto, cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but torch {torch.__version__} sees no CUDA GPU")
    return torch.device(device)


class TorchNetwork(ContractNetwork):
    """One torch module behind the ``Network`` protocol."""

    def __init__(self, module: nn.Module, contract: NetworkContract, device: torch.device, dtype: torch.dtype):
        self.module = module.to(device=device, dtype=dtype).eval()
        self.contract, self.device, self.dtype = contract, device, dtype

    @torch.inference_mode()
    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ordered = [inputs[spec.name].to(self.device, self.dtype if spec.dtype.is_floating_point and not spec.exact
                                        else spec.dtype)
                   for spec in self.contract.inputs]
        outputs = self.module(*ordered)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.contract.output_names, outputs))


class TorchBackend:
    name = "torch"
    precisions = tuple(DTYPES)
    default_precision = "fp32"

    def unavailable_reason(self) -> str | None:
        return None

    def open_model(self, model: Any, family: Any, device: str = "auto", precision: str = "fp32") -> Networks:
        """Every role's UNet over one set of weights, with the text encoder and the VAE decoder;
        the UNets can record their attention."""
        where = resolve_device(device)
        if precision not in DTYPES:
            raise UserError(f"the torch backend runs in {' or '.join(DTYPES)}, not {precision!r}")
        if precision == "fp16" and where.type != "cuda":
            raise UserError("float16 needs a CUDA device; the CPU reference runs in float32")
        dtype = DTYPES[precision]
        contracts = {role: family.networks(model.facts, role) for role in ROLES}

        def network(component: str, role: str) -> TorchNetwork:
            return TorchNetwork(family.torch_module(model, component, role), contracts[role][component], where, dtype)

        unets = {role: network("unet", role) for role in ROLES}
        label = f"torch-{where.type}" + ("-fp16" if precision == "fp16" else "")
        return Networks(label, network("text_encoder", VALUES.name), unets, network("vae_decoder", VALUES.name),
                        precision, torch.__version__, attention={role: unet.module for role, unet in unets.items()})


BACKEND = TorchBackend()
