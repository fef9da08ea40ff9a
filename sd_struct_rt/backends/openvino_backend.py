"""OpenVINO on the CPU: the exported ONNX graphs, converted to OpenVINO IR at build time.

An engine set holds ``<component>.xml`` + ``.bin`` (float32 weights). Precision is chosen when a
model is compiled: ``fp32``, or ``bf16`` on CPUs with AVX512-BF16 or AMX (OpenVINO's
``INFERENCE_PRECISION_HINT``), refused in one line elsewhere. Compiled models are cached in
``<cache>/openvino`` (OpenVINO's ``CACHE_DIR``), so only the first load of a set pays for
compilation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..contract import NetworkContract
from ..errors import UserError
from ..files import reporting
from . import BuildTarget, ContractNetwork, EngineBackend, OpenOptions, Opener, Stage

INSTALL_HINT = "pip install 'sd-struct-rt[openvino]'"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def require_openvino():
    """The openvino module, or one UserError line saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UserError(f"OpenVINO is not installed; {INSTALL_HINT}") from None
    return openvino


def _core():
    return require_openvino().Core()


def require_precision(core, precision: str) -> None:
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        raise UserError(f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no bf16 support "
                        "(AVX512-BF16 or AMX); build with --precision fp32")


class OpenVINONetwork(ContractNetwork):
    """One compiled OpenVINO model behind the ``Network`` protocol (CPU tensors in and out)."""

    def __init__(self, compiled, contract: NetworkContract, source: object = "an OpenVINO model"):
        self.compiled, self.contract = compiled, contract
        self.request = compiled.create_infer_request()
        inputs, outputs = self._named(compiled.inputs, contract.input_names), \
            self._named(compiled.outputs, contract.output_names)
        self.check_names(source, [name for name, _ in inputs], [name for name, _ in outputs],
                         "sdrt build-engine --backend openvino")
        self.outputs = dict(outputs)
        self.input_dtypes = {name: np.dtype(port.get_element_type().to_dtype()) for name, port in inputs}

    @staticmethod
    def _named(ports, names: list[str]) -> list[tuple[str, object]]:
        """Each port with the name we speak: a port may carry several tensor names (an input that
        feeds a Cast is also the Cast's), and the contract's one is ours; a port with none of
        them, or two ports with one, leave the contract's names unmatched."""
        return [(next((name for name in sorted(port.get_names()) if name in names), min(port.get_names(), default="?")),
                 port) for port in ports]

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: np.ascontiguousarray(tensor.detach().to("cpu").numpy().astype(self.input_dtypes[name],
                                                                                    copy=False))
                 for name, tensor in inputs.items()}
        results = self.request.infer(feeds)
        # The request owns its output buffers and reuses them on the next call: copy out.
        return {name: torch.from_numpy(np.array(results[port], dtype=np.float32))
                for name, port in self.outputs.items()}


class OpenVINOBackend(EngineBackend):
    name = "openvino"
    title = "OpenVINO"
    precisions = ("fp32", "bf16")
    default_precision = "fp32"
    build_stages = 3  # one IR conversion per component

    def unavailable_reason(self) -> str | None:
        return None if importlib.util.find_spec("openvino") else f"OpenVINO is not installed; {INSTALL_HINT}"

    def runs_on_gpu(self) -> bool:
        return False

    def version(self) -> str:
        return require_openvino().__version__

    def device_description(self) -> dict[str, str]:
        core = _core()
        return {"name": core.get_property("CPU", "FULL_DEVICE_NAME"),
                "capabilities": " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}

    def build(self, graphs: Mapping[str, Path], target: BuildTarget, stage: Stage) -> dict[str, str]:
        openvino = require_openvino()
        core = openvino.Core()
        require_precision(core, target.precision)
        files = {}
        for component, graph in graphs.items():
            stage(f"converting the {component.replace('_', ' ')} to OpenVINO IR")
            ir = target.staging / f"{component}.xml"
            # Weights stay float32 in the IR; bf16 is a compile-time choice, so one IR serves both.
            openvino.save_model(core.read_model(str(graph)), str(ir), compress_to_fp16=False)
            files[component] = ir.name
        return files

    def opener(self, options: OpenOptions, precision: str) -> Opener:
        if options.cuda_graphs:
            raise UserError("CUDA graphs are a TensorRT option; OpenVINO engines run on the CPU")
        if options.device not in ("auto", "cpu"):
            raise UserError(f"OpenVINO engines run on the CPU here, not on device {options.device!r}")
        from ..paths import cache_dir

        core = _core()
        require_precision(core, precision)
        cache = cache_dir() / "openvino"  # compiled models: only a set's first load compiles
        with reporting("write the OpenVINO model cache", cache):
            cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        return lambda file, contract: OpenVINONetwork(core.compile_model(str(file), "CPU", config), contract, file)

    def label(self, networks: Mapping[str, ContractNetwork], options: OpenOptions, precision: str) -> str:
        return f"openvino-cpu{'-bf16' if precision == 'bf16' else ''}"


BACKEND = OpenVINOBackend()
