"""ONNX Runtime backends: the exported graphs (``sd_struct_rt.export.onnx_export``) behind the
protocols of ``sd_struct_rt.backends``.

Sessions are set up for the latency of one call at a time: all graph optimizations, sequential
execution, one intra-op thread per physical core. On ``cuda`` the CUDA execution provider
reads and writes torch CUDA tensors in place through I/O binding (no host round trip); on
``cpu`` tensors pass as numpy arrays, without a copy where their dtype already matches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import LEVEL_INPUTS

DEVICES = ("auto", "cpu", "cuda")
_MODE_OF_LEVEL_INPUT = {name: mode for mode, name in LEVEL_INPUTS.items()}
# ONNX Runtime's type names -> the torch dtype fed or returned, and the numpy one I/O binding wants.
_DTYPES = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16),
           "tensor(int64)": (torch.int64, np.int64), "tensor(int32)": (torch.int32, np.int32)}
# Metadata of the VAE decoder graph: its upscaling, to allocate the images for I/O binding.
IMAGE_SCALE_METADATA = "sd_struct_rt.image_scale"


def require_onnxruntime():
    """The onnxruntime module, or one UserError line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX Runtime is not installed; pip install 'sd-struct-rt[cpu]' "
                        "(or 'sd-struct-rt[gpu]' for CUDA)") from None
    return onnxruntime


def physical_cores() -> int:
    """Physical cores of this machine, or 0 (ONNX Runtime's own default, physical cores too)."""
    try:
        import psutil
    except ImportError:
        return 0
    return psutil.cpu_count(logical=False) or 0


def session_options(optimized_model: Path | None = None):
    """Options for low latency; ``optimized_model`` also saves the optimized graph there.

    A saved optimized graph holds fusions for this machine's provider and CPU: reuse it only
    here.
    """
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = physical_cores()
    # Three sessions (text encoder, UNet, VAE) run one after another in a pipeline: threads
    # left spinning after one session's run would steal the cores the next one needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
        # The optimized UNet of a real model is over 2 GB too.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{optimized_model.name}.data")
    return options


class OrtGraph:
    """One ONNX Runtime session with torch tensors in and one torch tensor out."""

    def __init__(self, graph: Path, device: str = "auto", optimized_model: Path | None = None):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
        ort = require_onnxruntime()
        graph = Path(graph)
        if not graph.is_file():
            raise UserError(f"ONNX graph {graph} does not exist; export it first")
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
        if device == "cuda" and not has_cuda:
            raise UserError("ONNX Runtime cannot use CUDA here (no CUDAExecutionProvider or no CUDA device); "
                            "pip uninstall onnxruntime && pip install 'sd-struct-rt[gpu]', or use the cpu device")
        self.device = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(graph), session_options(optimized_model), providers=providers)
        if self.device.type == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise UserError("ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing "
                            "or mismatched); install the onnxruntime-gpu build that matches your CUDA")
        self.input_types = {node.name: _DTYPES[node.type] for node in self.session.get_inputs()}
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        self.output_type = _DTYPES[output.type]
        self.output_shape = output.shape
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def run(self, inputs: dict[str, torch.Tensor], output_shape: tuple[int, ...]) -> torch.Tensor:
        """Run on ``inputs``, cast to the graph's dtypes; ``output_shape`` is what the graph returns."""
        if self.device.type == "cpu":
            feeds = {name: tensor.detach().to("cpu", self.input_types[name][0]).contiguous().numpy()
                     for name, tensor in inputs.items()}
            return torch.from_numpy(self.session.run([self.output_name], feeds)[0])
        binding = self.session.io_binding()
        # Keep the cast copies alive until the run: the binding holds only raw pointers.
        on_device = {name: tensor.detach().to(self.device, self.input_types[name][0]).contiguous()
                     for name, tensor in inputs.items()}
        for name, tensor in on_device.items():
            binding.bind_input(name, "cuda", self.device.index, self.input_types[name][1],
                               tuple(tensor.shape), tensor.data_ptr())
        torch_dtype, numpy_dtype = self.output_type
        output = torch.empty(output_shape, dtype=torch_dtype, device=self.device)
        binding.bind_output(self.output_name, "cuda", self.device.index, numpy_dtype, output_shape,
                            output.data_ptr())
        # ONNX Runtime computes on its own stream, which does not wait for torch's: the inputs
        # must be written first. Its run ends with a stream synchronisation, so the output is
        # complete for any torch stream when run_with_iobinding returns.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return output


class OrtTextEncoder:
    def __init__(self, graph: Path, device: str = "auto", optimized_model: Path | None = None):
        self.graph = OrtGraph(graph, device, optimized_model)
        self.width = self.graph.output_shape[-1]

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.graph.run({"input_ids": input_ids}, (*input_ids.shape, self.width))


class OrtUNet:
    """The UNet graph of either mode; ``mode`` is read from its level input's name."""

    def __init__(self, graph: Path, device: str = "auto", optimized_model: Path | None = None):
        self.graph = OrtGraph(graph, device, optimized_model)
        levels = [name for name in self.graph.input_types if name in _MODE_OF_LEVEL_INPUT]
        if len(levels) != 1:
            raise UserError(f"{graph} is not a structured UNet graph (no value_states or key_states input); "
                            "export it again")
        self.level_input = levels[0]
        self.mode = _MODE_OF_LEVEL_INPUT[self.level_input]

    def __call__(self, sample, timestep, encoder_hidden_states, level_states, level_mask):
        # The graph takes one timestep per row; a shared scalar step is broadcast to the rows.
        timestep = timestep.reshape(-1).expand(sample.shape[0])
        inputs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states,
                  self.level_input: level_states, "level_mask": level_mask}
        return self.graph.run(inputs, tuple(sample.shape))


class OrtVAEDecoder:
    def __init__(self, graph: Path, device: str = "auto", optimized_model: Path | None = None):
        self.graph = OrtGraph(graph, device, optimized_model)
        if IMAGE_SCALE_METADATA not in self.graph.metadata:
            raise UserError(f"{graph} does not record its image scale; export it again with sdrt")
        self.scale = int(self.graph.metadata[IMAGE_SCALE_METADATA])

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = latent.shape
        return self.graph.run({"latent": latent}, (batch, 3, self.scale * height, self.scale * width))
