"""Backends: who runs the networks, and the one registry of them.

Every backend opens each network of a family on its own, as a ``Network``: named ``torch``
tensors in (the contract's input names, on any device), a dict of named outputs back in the
contract's dtypes. What every backend's networks share (their names checked against the
contract, shapes held to an engine profile, outputs cast to the contract) is ``ContractNetwork``;
putting a set together (``Networks``) is ``EngineBackend.open``, the same for every engine
backend. The pipeline, ``check-engine`` and ``bench`` therefore treat all backends alike.

Two kinds of backend:

* the **torch reference** opens a loaded model (``ModelBackend.open_model``);
* an **engine backend** builds an engine set from the exported ONNX graphs
  (``EngineBackend.build``) and opens a built one, network by network, with the loader its
  ``opener`` sets up once per set (as Polygraphy's loaders are configured, then called).

Adding a backend is one module defining ``BACKEND`` and one entry in ``REGISTRY``; the CLI's
``--backend`` choices, ``auto``, the engine build and the runtime all read the registry.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch

from ..contract import NetworkContract, Profile, ShapeRange
from ..errors import UserError

Stage = Callable[[str], None]  # announces the next stage of a long job to the user
Opener = Callable[[Path, NetworkContract], "ContractNetwork"]  # one engine file -> its network


class Network(Protocol):
    contract: NetworkContract

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run on the contract's inputs (any device, cast as needed); outputs stay on the backend's device."""


@runtime_checkable
class AttentionRecording(Protocol):
    """A UNet that can report where its cross-attention looks (the torch reference's can)."""

    def recording(self, recorder: Any) -> AbstractContextManager: ...

    def cross_attention_downsampling(self) -> tuple[int, ...]: ...


class ContractNetwork:
    """What every backend's network does around its own ``run``: inputs held to the shapes it
    accepts (an engine profile's, when it has one), outputs given in the contract's dtypes."""

    contract: NetworkContract
    accepted: Mapping[str, ShapeRange] | None = None  # None: any shape the contract admits

    def check_names(self, source: Any, inputs: list[str], outputs: list[str],
                    rebuild: str = "sdrt build-engine") -> None:
        """Refuse an engine whose inputs or outputs are not the contract's (another mode, an old set)."""
        if sorted(inputs) != sorted(self.contract.input_names) or \
                sorted(outputs) != sorted(self.contract.output_names):
            raise UserError(f"{source} takes {sorted(inputs)} and gives {sorted(outputs)}, not "
                            f"{sorted(self.contract.input_names)} -> {sorted(self.contract.output_names)}; "
                            f"rebuild it with: {rebuild}")

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.accepted is not None:
            self.contract.check_shapes({name: tuple(tensor.shape) for name, tensor in inputs.items()}, self.accepted)
        outputs = self.run(inputs)
        return {spec.name: outputs[spec.name].to(spec.dtype) for spec in self.contract.outputs}


@dataclass
class Networks:
    """The networks a pipeline runs, all from one backend."""

    label: str  # what the PNG metadata and messages call the backend: "onnxruntime-cpu", "torch-cuda-fp16"
    text_encoder: Network
    unets: Mapping[str, Network]  # by the role the stacked levels play: "values" and/or "keys"
    vae_decoder: Network
    precision: str = "fp32"
    version: str = ""  # of the runtime that runs them, for the PNG metadata
    # The UNets, by role, that can record their attention: a capability only some backends have.
    attention: Mapping[str, AttentionRecording] = field(default_factory=dict)

    def component(self, name: str, mode: str) -> Network:
        """The network of component ``name`` (``unet``: the one of ``mode``)."""
        return self.unets[mode] if name == "unet" else getattr(self, name)


@dataclass(frozen=True)
class BuildOptions:
    """Options of an engine build that only some backends read (they say so in ``--help``)."""

    optimization_level: int = 3
    timing_cache: Path | None = None


@dataclass(frozen=True)
class BuildTarget:
    """What one engine build makes: for these contracts and profile, at this precision, in ``staging``."""

    contracts: Mapping[str, NetworkContract]
    profile: Profile
    precision: str
    staging: Path
    options: BuildOptions = BuildOptions()


@dataclass(frozen=True)
class OpenOptions:
    device: str = "auto"  # auto, cpu or cuda (ONNX Runtime); TensorRT always runs on CUDA
    cuda_graphs: bool = False  # TensorRT: replay each engine's run from a CUDA graph


class ModelBackend(Protocol):
    name: str
    precisions: tuple[str, ...]
    default_precision: str

    def unavailable_reason(self) -> str | None: ...

    def open_model(self, model: Any, family: Any, device: str, precision: str) -> Networks: ...


class EngineBackend:
    """An engine backend: it builds a set's engine files and opens each one as a ``Network``."""

    name: str
    title: str  # "ONNX Runtime", for messages
    precisions: tuple[str, ...]
    default_precision: str
    build_stages: int  # stages that build() announces, for the progress bar

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else the one line that says how to get it."""
        raise NotImplementedError

    def runs_on_gpu(self) -> bool:
        """Whether its engines would run on a GPU here (asked only when it is available)."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def device_description(self) -> dict[str, str]:
        """What engines are built for, recorded in the manifest (empty when they are portable)."""
        return {}

    def build(self, graphs: Mapping[str, Path], target: BuildTarget, stage: Stage) -> dict[str, str]:
        """Engines from ONNX graphs, written into ``target.staging``; returns each component's file name there."""
        raise NotImplementedError

    def opener(self, options: OpenOptions, precision: str) -> Opener:
        """The loader of one built engine as a network of its contract, set up once for a set; it
        refuses, before any network opens, options these engines cannot run with."""
        raise NotImplementedError

    def label(self, networks: Mapping[str, ContractNetwork], options: OpenOptions, precision: str) -> str:
        """What the PNG metadata calls these networks' backend."""
        raise NotImplementedError

    def open(self, files: Mapping[str, Path], contracts: Mapping[str, NetworkContract], mode: str,
             options: OpenOptions, precision: str | None = None, profile: Profile | None = None) -> Networks:
        """The networks of a built set, its UNet in role ``mode``; ``precision`` is the one the set was
        built for, and ``profile``, when given, the shapes every network then accepts."""
        precision = precision or self.default_precision
        open_network = self.opener(options, precision)
        networks = {name: open_network(files[name], contracts[name]) for name in files}
        if profile is not None:
            for name, network in networks.items():
                network.accepted = contracts[name].profile_shapes(profile)
        return Networks(self.label(networks, options, precision), networks["text_encoder"], {mode: networks["unet"]},
                        networks["vae_decoder"], precision, self.version())


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str
    summary: str  # one line for --help
    builds_engines: bool = True

    def load(self) -> Any:
        return importlib.import_module(self.module).BACKEND


# Engine backends in the order ``auto`` prefers them, on a GPU and then on the CPU: OpenVINO
# before ONNX Runtime, as it was faster at SD 1.5 size (benchmarks/results/real_size_cpu.json).
REGISTRY = (
    BackendEntry("tensorrt", "sd_struct_rt.backends.tensorrt_backend",
                 "TensorRT 10 engines on an NVIDIA GPU, built through Polygraphy"),
    BackendEntry("openvino", "sd_struct_rt.backends.openvino_backend",
                 "OpenVINO on the CPU, fp32 or bf16 (AVX512-BF16/AMX CPUs)"),
    BackendEntry("onnxruntime", "sd_struct_rt.backends.onnxruntime_backend",
                 "ONNX Runtime on the CPU, or on CUDA with onnxruntime-gpu"),
    BackendEntry("torch", "sd_struct_rt.backends.torch_backend",
                 "the torch reference, run from the model folder (CPU, or CUDA in fp32/fp16)", builds_engines=False),
)


def entry(name: str) -> BackendEntry:
    for candidate in REGISTRY:
        if candidate.name == name:
            return candidate
    raise UserError(f"unknown backend {name!r}; choose one of {', '.join(names())}")


def names(builds_engines: bool | None = None) -> list[str]:
    return [e.name for e in REGISTRY if builds_engines is None or e.builds_engines == builds_engines]


def engine_backend(name: str) -> EngineBackend:
    chosen = entry(name)
    if not chosen.builds_engines:
        raise UserError(f"the {name} backend runs a model folder and builds no engines; choose one of "
                        f"{', '.join(names(builds_engines=True))}")
    return chosen.load()


def best_engine_backend() -> tuple[str, list[str]]:
    """The engine backend ``auto`` takes here: the first available one in ``REGISTRY`` order that
    runs on a GPU, else the first available one; and the backends preferred to it that do not run
    here."""
    available, unavailable, reasons = [], [], []
    for candidate in REGISTRY:
        if not candidate.builds_engines:
            continue
        backend = candidate.load()
        reason = backend.unavailable_reason()
        (available if reason is None else unavailable).append((candidate.name, backend))
        reasons += [reason] if reason else []
    if not available:
        raise UserError("no engine backend runs here: " + "; ".join(reasons))
    chosen = next((name for name, backend in available if backend.runs_on_gpu()), available[0][0])
    order = [entry.name for entry in REGISTRY]
    return chosen, [name for name, _ in unavailable if order.index(name) < order.index(chosen)]


def require_available(backend: Any) -> None:
    reason = backend.unavailable_reason()
    if reason is not None:
        raise UserError(reason)
