"""TensorRT engines from the exported ONNX graphs, built through Polygraphy.

Every function that needs TensorRT imports it through ``require_tensorrt()``, so this module
imports (and is unit-tested) on machines without TensorRT or a GPU. The optimization profile
of each engine comes from the network's contract (``NetworkContract.profile_shapes``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..contract import ShapeRange
from ..errors import UserError
from ..files import atomic_path

PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMIZATION_LEVELS = range(6)  # TensorRT's builder optimization levels
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default
TENSORRT_MAJOR = 10
INSTALL_HINT = "pip install 'sd-struct-rt[tensorrt]'"

Progress = Callable[[str, int, int], None]  # (phase, steps done, steps in the phase)


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line ``UserError`` that says how to get it."""
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: the wheel is there, its CUDA libraries are not
        missing = isinstance(error, ModuleNotFoundError) and error.name == "tensorrt"
        problem = ("is not installed (no module named 'tensorrt')" if missing
                   else f"does not load ({_first_line(error)})")
        raise UserError(f"TensorRT {problem}; install it with: {INSTALL_HINT} "
                        "(TensorRT needs an NVIDIA GPU with CUDA)") from None
    version = str(getattr(tensorrt, "__version__", "of unknown version"))
    if version.split(".")[0] != str(TENSORRT_MAJOR):
        raise UserError(f"TensorRT {version} is installed but sd-struct-rt needs TensorRT "
                        f"{TENSORRT_MAJOR}; install it with: {INSTALL_HINT}")
    return tensorrt


def require_cuda():
    """The ``torch.device`` engines run on, or a one-line ``UserError`` when there is none."""
    if not torch.cuda.is_available():
        build = " (a CPU-only build; install a CUDA build of torch)" if torch.version.cuda is None else ""
        raise UserError(f"TensorRT needs an NVIDIA GPU with CUDA, and torch {torch.__version__}{build} sees none")
    return torch.device("cuda", torch.cuda.current_device())


def device_description() -> dict[str, str]:
    """The GPU engines are built for, as recorded in the manifest and the cache key."""
    device = require_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def make_progress_monitor(trt, progress: Progress | None):
    """A ``trt.IProgressMonitor`` that reports top-level build phases to ``progress``.

    An exception raised in a callback (Ctrl-C lands there: during a build Python runs only
    inside these callbacks) must not cross TensorRT's noexcept interface, where it would abort
    the process; the monitor keeps it in ``failure`` and asks TensorRT to cancel the build.
    """

    class BuildMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.failure: BaseException | None = None
            self.top_phases: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._guard(self._started, phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            self._guard(self._stepped, phase_name, step)
            return self.failure is None

        def phase_finish(self, phase_name):
            self._guard(self.top_phases.pop, phase_name, None)

        def _guard(self, call, *args):
            try:
                call(*args)
            except BaseException as error:
                self.failure = self.failure or error

        def _started(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.top_phases[phase_name] = num_steps
                if progress is not None:
                    progress(phase_name, 0, num_steps)

        def _stepped(self, phase_name, step):
            if progress is not None and phase_name in self.top_phases:
                progress(phase_name, step + 1, self.top_phases[phase_name])

    return BuildMonitor()


def build_engine(onnx_path: Path, engine_path: Path, shapes: Mapping[str, ShapeRange], precision: str,
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, timing_cache_path: Path | None = None,
                 progress: Progress | None = None) -> None:
    """Build ``onnx_path`` into a serialized engine at ``engine_path`` (complete or absent).

    ``fp32`` keeps TF32 off, so that engine stays a parity reference. The timing cache, when
    given, is read if it exists and rewritten (atomically) with what this build measured.
    """
    trt = require_tensorrt()
    require_cuda()
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise UserError(f"TensorRT optimization level must be 0..5, not {optimization_level}")
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path} does not exist; export the ONNX graphs before building engines")

    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, SaveEngine,
                                        Profile as OptimizationProfile)
    from polygraphy.exception import PolygraphyException

    profile = OptimizationProfile()
    for name, (low, opt, high) in shapes.items():
        profile.add(name, low, opt, high)
    monitor = make_progress_monitor(trt, progress)
    with contextlib.ExitStack() as stack:
        # Polygraphy takes open files as well as paths; files leave no '.lock' beside the cache.
        cache_in = cache_out = None
        if timing_cache_path is not None:
            if timing_cache_path.is_file():
                cache_in = stack.enter_context(open(timing_cache_path, "rb"))
            cache_out = stack.enter_context(open(stack.enter_context(atomic_path(timing_cache_path)), "w+b"))
        engine_file = stack.enter_context(atomic_path(engine_path))
        config = CreateConfig(fp16=precision == "fp16", bf16=precision == "bf16", profiles=[profile],
                              builder_optimization_level=optimization_level, load_timing_cache=cache_in,
                              progress_monitor=monitor)
        network = NetworkFromOnnxPath(str(onnx_path))
        try:
            SaveEngine(EngineFromNetwork(network, config, save_timing_cache=cache_out), str(engine_file))()
        except PolygraphyException as error:
            if monitor.failure is None:
                raise UserError(f"TensorRT could not build {engine_path.name} from {onnx_path}: "
                                f"{_first_line(error)} (the TensorRT log above has the details)") from None
        if monitor.failure is not None:
            raise monitor.failure


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
