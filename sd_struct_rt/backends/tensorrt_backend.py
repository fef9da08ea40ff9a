"""The TensorRT backend: serialized engines run from torch CUDA memory on a torch CUDA stream.

TensorRT is imported only when an engine is opened, so this module imports anywhere; the
shape check against an engine's optimization profile is a pure function.

Inputs may be CPU or CUDA tensors of any dtype; they are copied into buffers the engine owns
(converting dtype on the way), and outputs come back as float32 on the device of the first
input. Owned buffers give CUDA graphs the fixed addresses they need and spare the caching
allocator a round trip per call; outputs are copied out because the caller keeps them (text
embeddings, scheduler history) while the next call overwrites the buffers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch

from ..errors import UserError
from . import LEVEL_INPUTS
from ..export.tensorrt_build import ShapeRange, require_cuda, require_tensorrt


class Axis(NamedTuple):
    name: str
    unit: str


ROWS = Axis("batch", "UNet rows, two per prompt")
PROMPTS = Axis("batch", "prompts")
STRINGS = Axis("strings", "texts in one text-encoder call")
HEIGHT = Axis("height", "latent pixels, image pixels / 8")
WIDTH = Axis("width", "latent pixels, image pixels / 8")
LEVELS = Axis("levels", "levels per prompt, the full prompt included")
CHANNELS = Axis("channels", "latent channels")
TOKENS = Axis("tokens", "CLIP positions")
TEXT_WIDTH = Axis("text width", "text-encoder features")

AXES: dict[str, tuple[Axis, ...]] = {
    "sample": (ROWS, CHANNELS, HEIGHT, WIDTH),
    "timestep": (ROWS,),
    "encoder_hidden_states": (ROWS, TOKENS, TEXT_WIDTH),
    "value_states": (ROWS, LEVELS, TOKENS, TEXT_WIDTH),
    "key_states": (ROWS, LEVELS, TOKENS, TEXT_WIDTH),
    "level_mask": (ROWS, LEVELS),
    "input_ids": (STRINGS, TOKENS),
    "latent": (PROMPTS, CHANNELS, HEIGHT, WIDTH),
}

TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}


def check_shapes_against_profile(shapes: Mapping[str, Sequence[int]],
                                 profile_ranges: Mapping[str, ShapeRange]) -> None:
    """Refuse, in one line naming each offending dimension, shapes the engine was not built for.

    The same dimension usually appears in several inputs (the batch in all five UNet inputs);
    it is reported once.
    """
    if shapes.keys() != profile_ranges.keys():
        raise ValueError(f"inputs {sorted(shapes)} do not match the engine's {sorted(profile_ranges)}")
    problems: dict[str, str] = {}
    for name, shape in shapes.items():
        low, _, high = profile_ranges[name]
        if len(shape) != len(low):
            problems[name] = f"{name} has {len(shape)} dimensions, the engine takes {len(low)}"
            continue
        axes = AXES.get(name) or tuple(Axis(f"{name} axis {index}", "") for index in range(len(low)))
        for axis, size, least, most in zip(axes, shape, low, high):
            if least <= size <= most or axis.name in problems:
                continue
            allowed = f"must be {least}" if least == most else f"is outside the engine's {least}..{most}"
            problems[axis.name] = f"{axis.name} {size} {allowed} ({axis.unit}; input {name})"
    if problems:
        raise UserError(f"{'; '.join(problems.values())}; the engines were built for other shapes: rebuild "
                        "them with sdrt build-engine (--batch, --size and --levels set the ranges)")


class CapturedRun(NamedTuple):
    input_shapes: tuple[tuple[int, ...], ...]
    graph: torch.cuda.CUDAGraph
    output_shapes: dict[str, tuple[int, ...]]


class TrtEngine:
    """One engine, its execution context, its buffers and (optionally) a CUDA graph of its run.

    With ``cuda_graphs``, a call with new input shapes runs normally (the warm-up TensorRT
    needs before capture) and is then captured; following calls with the same shapes replay
    the graph, which removes the per-kernel launch cost. The denoising loop calls the UNet
    with the same shapes at every step, so one graph serves a whole image. Only the graph of
    the shapes the context is bound to is kept: a graph replays the context's work as it was
    set up at capture, so it is not trusted once the context has been bound to other shapes.
    """

    def __init__(self, path: Path, cuda_graphs: bool = False):
        trt = require_tensorrt()
        self.device = require_cuda()
        if not path.is_file():
            raise UserError(f"engine file {path} does not exist; build it with: sdrt build-engine")
        self.path = path
        self.cuda_graphs = cuda_graphs
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
        self.profile_ranges = {
            name: ShapeRange(*(tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, 0)))
            for name in self.input_names}
        self.stream = torch.cuda.Stream(self.device)  # capture needs a non-default stream
        self._buffers: dict[str, torch.Tensor] = {}
        self._captured: CapturedRun | None = None

    def _torch_dtype(self, name: str) -> torch.dtype:
        dtype = self.engine.get_tensor_dtype(name)
        if dtype.name not in TORCH_DTYPES:
            raise UserError(f"{self.path} has tensor {name} of type {dtype.name}, which sd-struct-rt does not "
                            "feed; rebuild it with: sdrt build-engine")
        return TORCH_DTYPES[dtype.name]

    def require_io(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """Refuse an engine whose tensors are not the ones this component exchanges."""
        if sorted(self.input_names) != sorted(inputs) or sorted(self.output_names) != sorted(outputs):
            raise UserError(f"{self.path} takes {sorted(self.input_names)} and gives {sorted(self.output_names)}, "
                            f"not {sorted(inputs)} -> {sorted(outputs)}; rebuild it with: sdrt build-engine")

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
        check_shapes_against_profile(shapes, self.profile_ranges)
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


class TrtTextEncoder:
    def __init__(self, path: Path, cuda_graphs: bool = False):
        self.engine = TrtEngine(path, cuda_graphs)
        self.engine.require_io(["input_ids"], ["text_embeddings"])

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engine(input_ids=input_ids)["text_embeddings"]


class TrtUNet:
    def __init__(self, path: Path, mode: str = "values", cuda_graphs: bool = False):
        if mode not in LEVEL_INPUTS:
            raise ValueError(f"mode must be one of {tuple(LEVEL_INPUTS)}, not {mode!r}")
        self.mode = mode
        self.level_input = LEVEL_INPUTS[mode]
        self.engine = TrtEngine(path, cuda_graphs)
        for other_mode, other_input in LEVEL_INPUTS.items():
            if other_input != self.level_input and other_input in self.engine.input_names:
                raise UserError(f"{path} was built for --mode {other_mode}, not {mode}; "
                                f"rebuild it with: sdrt build-engine --mode {mode}")
        self.engine.require_io(["sample", "timestep", "encoder_hidden_states", self.level_input, "level_mask"],
                               ["noise_pred"])

    def __call__(self, sample, timestep, encoder_hidden_states, level_states, level_mask):
        return self.engine(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                           level_mask=level_mask, **{self.level_input: level_states})["noise_pred"]


class TrtVAEDecoder:
    def __init__(self, path: Path, cuda_graphs: bool = False):
        self.engine = TrtEngine(path, cuda_graphs)
        self.engine.require_io(["latent"], ["images"])

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        return self.engine(latent=latent)["images"]
