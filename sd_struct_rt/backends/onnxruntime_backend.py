"""ONNX Runtime: the exported graphs themselves are the engines.

Sessions are set up for the latency of one call at a time: all graph optimizations, sequential
execution, one intra-op thread per physical core. On ``cuda`` the CUDA execution provider
reads and writes torch CUDA tensors in place through I/O binding (no host round trip); on
``cpu`` tensors pass as numpy arrays, without a copy where their dtype already matches.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..contract import NetworkContract
from ..errors import UserError
from . import BuildTarget, ContractNetwork, EngineBackend, OpenOptions, Opener, Stage

DEVICES = ("auto", "cpu", "cuda")
INSTALL_HINT = "pip install 'sd-struct-rt[cpu]' (or 'sd-struct-rt[gpu]' for CUDA)"
# ONNX Runtime's type names -> the torch dtype fed or returned, and the numpy one I/O binding wants.
_DTYPES = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16),
           "tensor(int64)": (torch.int64, np.int64), "tensor(int32)": (torch.int32, np.int32)}


def cuda_usable(ort) -> bool:
    """ONNX Runtime has its CUDA provider (the onnxruntime-gpu wheel) and a CUDA device exists."""
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def require_onnxruntime():
    """The onnxruntime module, or one UserError line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX Runtime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def physical_cores() -> int:
    """Physical cores of this machine, or 0 (ONNX Runtime's own default, physical cores too)."""
    try:
        import psutil
    except ImportError:
        return 0
    return psutil.cpu_count(logical=False) or 0


def session_options():
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = physical_cores()
    # Three sessions (text encoder, UNet, VAE) run one after another in a pipeline: threads
    # left spinning after one session's run would steal the cores the next one needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtNetwork(ContractNetwork):
    """One ONNX Runtime session behind the ``Network`` protocol."""

    def __init__(self, graph: Path, contract: NetworkContract, device: str = "auto"):
        if device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        ort = require_onnxruntime()
        graph = Path(graph)
        if not graph.is_file():
            raise UserError(f"ONNX graph {graph} does not exist; export it first")
        has_cuda = cuda_usable(ort)
        if device == "cuda" and not has_cuda:
            raise UserError("ONNX Runtime cannot use CUDA here (no CUDAExecutionProvider or no CUDA device); "
                            "pip uninstall onnxruntime && pip install 'sd-struct-rt[gpu]', or use the cpu device")
        self.device = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(graph), session_options(), providers=providers)
        if self.device.type == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise UserError("ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing "
                            "or mismatched); install the onnxruntime-gpu build that matches your CUDA")
        self.contract = contract
        self.input_types = {node.name: _DTYPES[node.type] for node in self.session.get_inputs()}
        self.output_types = {node.name: _DTYPES[node.type] for node in self.session.get_outputs()}
        self.check_names(graph, list(self.input_types), list(self.output_types))

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            feeds = {name: tensor.detach().to("cpu", self.input_types[name][0]).contiguous().numpy()
                     for name, tensor in inputs.items()}
            names = list(self.output_types)
            return {name: torch.from_numpy(value) for name, value in zip(names, self.session.run(names, feeds))}
        binding = self.session.io_binding()
        # Keep the cast copies alive until the run: the binding holds only raw pointers.
        on_device = {name: tensor.detach().to(self.device, self.input_types[name][0]).contiguous()
                     for name, tensor in inputs.items()}
        for name, tensor in on_device.items():
            binding.bind_input(name, "cuda", self.device.index, self.input_types[name][1],
                               tuple(tensor.shape), tensor.data_ptr())
        outputs = {}
        for name, shape in self.contract.output_shapes({n: t.shape for n, t in on_device.items()}).items():
            torch_dtype, numpy_dtype = self.output_types[name]
            outputs[name] = torch.empty(shape, dtype=torch_dtype, device=self.device)
            binding.bind_output(name, "cuda", self.device.index, numpy_dtype, shape, outputs[name].data_ptr())
        # ONNX Runtime computes on its own stream, which does not wait for torch's: the inputs
        # must be written first. Its run ends with a stream synchronisation, so the outputs are
        # complete for any torch stream when run_with_iobinding returns.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outputs


class OnnxRuntimeBackend(EngineBackend):
    name = "onnxruntime"
    title = "ONNX Runtime"
    precisions = ("fp32",)
    default_precision = "fp32"
    build_stages = 0  # the ONNX graphs are what it runs

    def unavailable_reason(self) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else f"ONNX Runtime is not installed; {INSTALL_HINT}"

    def runs_on_gpu(self) -> bool:
        return cuda_usable(require_onnxruntime())

    def version(self) -> str:
        return require_onnxruntime().__version__

    def build(self, graphs: Mapping[str, Path], target: BuildTarget, stage: Stage) -> dict[str, str]:
        return {component: graph.name for component, graph in graphs.items()}

    def opener(self, options: OpenOptions, precision: str) -> Opener:
        if options.cuda_graphs:
            raise UserError("CUDA graphs are a TensorRT option; ONNX Runtime engines run without them")
        return lambda file, contract: OrtNetwork(file, contract, options.device)

    def label(self, networks: Mapping[str, ContractNetwork], options: OpenOptions, precision: str) -> str:
        return f"onnxruntime-{networks['unet'].device.type}"


BACKEND = OnnxRuntimeBackend()
