"""The TensorRT backend: serialized engines run from torch CUDA memory on a torch CUDA stream.

TensorRT is imported only when an engine is built or opened, so this module imports anywhere.

Inputs may be CPU or CUDA tensors of any dtype; they are copied into buffers the engine owns
(converting dtype on the way), and outputs come back as float32 on the device of the first
input. Owned buffers give CUDA graphs the fixed addresses they need and spare the caching
allocator a round trip per call; outputs are copied out because the caller keeps them (text
embeddings, scheduler history) while the next call overwrites the buffers.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Mapping, NamedTuple

import torch

from ..contract import NetworkContract, ShapeRange
from ..errors import UserError
from . import BuildTarget, ContractNetwork, EngineBackend, OpenOptions, Opener, Stage
from .tensorrt_build import INSTALL_HINT, PRECISIONS, build_engine, device_description, require_cuda, require_tensorrt

TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}


class CapturedRun(NamedTuple):
    input_shapes: tuple[tuple[int, ...], ...]
    graph: torch.cuda.CUDAGraph
    output_shapes: dict[str, tuple[int, ...]]


class TrtEngine(ContractNetwork):
    """One engine, its execution context, its buffers and (optionally) a CUDA graph of its run.

    With ``cuda_graphs``, a call with new input shapes runs normally (the warm-up TensorRT
    needs before capture) and is then captured; following calls with the same shapes replay
    the graph, which removes the per-kernel launch cost. The denoising loop calls the UNet
    with the same shapes at every step, so one graph serves a whole image. Only the graph of
    the shapes the context is bound to is kept: a graph replays the context's work as it was
    set up at capture, so it is not trusted once the context has been bound to other shapes.
    """

    def __init__(self, path: Path, contract: NetworkContract, cuda_graphs: bool = False):
        trt = require_tensorrt()
        self.device = require_cuda()
        if not path.is_file():
            raise UserError(f"engine file {path} does not exist; build it with: sdrt build-engine")
        self.path, self.contract, self.cuda_graphs = path, contract, cuda_graphs
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        self._runtime = trt.Runtime(logger)  # must outlive the engine it deserializes
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"{path} is not a TensorRT {trt.__version__} engine for this GPU (see the log above); "
                            "rebuild it with: sdrt build-engine")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"not enough GPU memory to run {path.name}; close other GPU programs or rebuild "
                            "with a smaller --batch or --size")
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = [name for name in names
                            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self.output_names = [name for name in names if name not in self.input_names]
        self.dtypes = {name: self._torch_dtype(name) for name in names}
        self.accepted = {  # the engine's own profile, until the set's manifest names it
            name: ShapeRange(*(tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, 0)))
            for name in self.input_names}
        self.check_names(path, self.input_names, self.output_names)
        self.stream = torch.cuda.Stream(self.device)  # capture needs a non-default stream
        self._buffers: dict[str, torch.Tensor] = {}
        self._captured: CapturedRun | None = None

    def _torch_dtype(self, name: str) -> torch.dtype:
        dtype = self.engine.get_tensor_dtype(name)
        if dtype.name not in TORCH_DTYPES:
            raise UserError(f"{self.path} has tensor {name} of type {dtype.name}, which sd-struct-rt does not "
                            "feed; rebuild it with: sdrt build-engine")
        return TORCH_DTYPES[dtype.name]

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        key = tuple(shapes[name] for name in self.input_names)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            if self._captured is not None and self._captured.input_shapes == key:
                output_shapes = self._captured.output_shapes
                self._stage(inputs, shapes)
                self._captured.graph.replay()
            else:
                self._captured = None  # its buffers may move and the context is about to be rebound
                output_shapes = self._bind(shapes)
                self._stage(inputs, shapes)
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError(f"TensorRT could not run {self.path.name}; see its log above")
                if self.cuda_graphs:
                    self._captured = CapturedRun(key, self._capture(), output_shapes)
        caller.wait_stream(self.stream)
        destination = next(iter(inputs.values())).device
        return {name: self._buffer(name, shape).to(destination, torch.float32, copy=True)
                for name, shape in output_shapes.items()}

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A view of ``name``'s buffer with ``shape``, growing the buffer only when it is too small."""
        count = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < count:
            buffer = self._buffers[name] = torch.empty(count, dtype=self.dtypes[name], device=self.device)
        return buffer[:count].view(shape)

    def _bind(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Set input shapes and every tensor's address; return the output shapes they imply."""
        for name in self.input_names:
            if not self.context.set_input_shape(name, shapes[name]):
                raise RuntimeError(f"TensorRT refused shape {shapes[name]} for {name} of {self.path.name}")
        output_shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_names}
        for name, shape in (*shapes.items(), *output_shapes.items()):
            self.context.set_tensor_address(name, self._buffer(name, shape).data_ptr())
        return output_shapes

    def _stage(self, inputs: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
        for name, tensor in inputs.items():
            self._buffer(name, shapes[name]).copy_(tensor)

    def _capture(self) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            captured = self.context.execute_async_v3(self.stream.cuda_stream)
        if not captured:
            raise UserError(f"{self.path.name} cannot be captured as a CUDA graph; run without CUDA graphs")
        return graph


class TensorRTBackend(EngineBackend):
    name = "tensorrt"
    title = "TensorRT"
    precisions = PRECISIONS
    default_precision = "fp16"
    build_stages = 3  # one engine per component

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return (f"TensorRT is not installed; install it with: {INSTALL_HINT} "
                    "(TensorRT needs an NVIDIA GPU with CUDA)")
        if not torch.cuda.is_available():
            return "TensorRT needs an NVIDIA GPU with CUDA, and torch sees none"
        return None

    def runs_on_gpu(self) -> bool:
        return True

    def version(self) -> str:
        return require_tensorrt().__version__

    def device_description(self) -> dict[str, str]:
        return device_description()

    def build(self, graphs: Mapping[str, Path], target: BuildTarget, stage: Stage) -> dict[str, str]:
        files = {}
        for component, graph in graphs.items():
            stage(f"building the TensorRT {component} engine ({target.precision})")
            plan = target.staging / f"{component}.plan"
            build_engine(graph, plan, target.contracts[component].profile_shapes(target.profile), target.precision,
                         target.options.optimization_level, target.options.timing_cache)
            files[component] = plan.name
        return files

    def opener(self, options: OpenOptions, precision: str) -> Opener:
        if options.device not in ("auto", "cuda"):
            raise UserError(f"TensorRT engines run on CUDA, not on device {options.device!r}")
        return lambda file, contract: TrtEngine(file, contract, options.cuda_graphs)

    def label(self, networks: Mapping[str, ContractNetwork], options: OpenOptions, precision: str) -> str:
        return "tensorrt" + ("-cuda-graphs" if options.cuda_graphs else "")


BACKEND = TensorRTBackend()
