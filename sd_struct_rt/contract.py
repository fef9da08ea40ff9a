"""What a network of a model family takes and gives (SPEC section 5), in one description.

A ``NetworkContract`` names each input and output with its dtype and dimensions. Dimensions
are dynamic (``Axis``: an ONNX dimension name, what users call it and its unit), fixed
(``Fixed``: CLIP's 77 positions, the text width) or a multiple of an input's (``Scaled``: the
VAE's image side). From that one description come the ONNX export's names and dynamic axes,
the engine profiles (``profile_shapes``), the sample inputs of export, ``check-engine`` and
``bench``, the output shapes a backend allocates, and the refusal of shapes an engine was not
built for. A family module (``sd_struct_rt.families``) writes the contracts of its networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

import torch

from .errors import InputError, UserError
from .inputs import MAX_BATCH, MAX_SIDE, MIN_SIDE
from .modes import MAX_LEVELS


class Axis(NamedTuple):
    """A dynamic dimension."""

    symbol: str  # the ONNX dimension name, e.g. "N"
    label: str  # what a user calls it, e.g. "batch"
    unit: str  # e.g. "UNet rows, two per prompt"
    example: int  # its size in sample inputs: distinct per axis, so tracing cannot confuse two axes


class Fixed(NamedTuple):
    """A dimension every call has at the same size."""

    label: str
    unit: str
    size: int


class Scaled(NamedTuple):
    """An output dimension that is a fixed multiple of an input axis."""

    of: Axis
    factor: int

    @property
    def symbol(self) -> str:
        return f"{self.factor}{self.of.symbol}"


Dim = Axis | Fixed | Scaled


class ShapeRange(NamedTuple):
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def standard_normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator)


def uniform_below(high: float) -> Callable[[tuple[int, ...], torch.Generator], torch.Tensor]:
    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * high
    return draw


def integers_below(high: int, dtype: torch.dtype) -> Callable[[tuple[int, ...], torch.Generator], torch.Tensor]:
    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=generator, dtype=dtype)
    return draw


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    dims: tuple[Dim, ...]
    draw: Callable[[tuple[int, ...], torch.Generator], torch.Tensor] = standard_normal  # a sample value
    exact: bool = False  # keeps its dtype when a backend runs the network in reduced precision

    def shape_at(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape when every axis has the size ``sizes[symbol]``."""
        def size(dim: Dim) -> int:
            if isinstance(dim, Fixed):
                return dim.size
            if isinstance(dim, Scaled):
                return sizes[dim.of.symbol] * dim.factor
            return sizes[dim.symbol]
        return tuple(size(dim) for dim in self.dims)


@dataclass(frozen=True)
class Profile:
    """The shapes an engine set accepts, in the user's units: prompts per call, image side in
    pixels, levels per prompt (the full prompt included)."""

    batch: tuple[int, int] = (1, 4)
    size: tuple[int, int] = (64, 512)
    levels: int = 8

    def __post_init__(self):
        low, high = self.batch
        if not 1 <= low <= high <= MAX_BATCH:
            raise InputError(f"range {low}:{high} must have 1 <= MIN <= MAX <= {MAX_BATCH}", parameter="batch")
        low, high = self.size
        if not MIN_SIDE <= low <= high <= MAX_SIDE:
            raise InputError(f"range {low}:{high} must have {MIN_SIDE} <= MIN <= MAX <= {MAX_SIDE}",
                             parameter="size")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise InputError(f"must be between 1 and {MAX_LEVELS}, not {self.levels}", parameter="levels")

    def require_size_step(self, step: int) -> None:
        """Image sides must be multiples of ``step``: a traced UNet halves its latent evenly only then."""
        low, high = self.size
        if low % step or high % step:
            raise InputError(f"range {low}:{high} must be multiples of {step}; "
                             f"try {max(step, low // step * step)}:{max(step, -(-high // step) * step)}",
                             parameter="size")

    def widened(self, batch: int, width: int, height: int, step: int) -> dict[str, str]:
        """build-engine options whose ranges cover this profile and the request."""
        sides = (width, height, *self.size)
        low_side = max(step, min(sides) // step * step)
        high_side = -(-max(sides) // step) * step
        return {"batch": f"{min(batch, self.batch[0])}:{max(batch, self.batch[1])}",
                "size": f"{low_side}:{high_side}"}

    def check(self, batch: int, width: int, height: int, step: int, rebuild: str) -> None:
        """Refuse, before anything runs, a request the engines were not built for.

        A side that is not a multiple of ``step`` no engine can take, so that refusal names the
        nearest sides instead of a rebuild; a request outside the ranges gets ``rebuild``.
        """
        for name, side in (("width", width), ("height", height)):
            if side % step:
                nearest = sorted({max(step, side // step * step), side // step * step + step})
                raise InputError(f"{side} is not a multiple of {step}, which every engine of this model "
                                 f"needs; use {' or '.join(map(str, nearest))}", parameter=name)
        problems = {}  # parameter (the batch is the prompts' count) -> what is wrong with it
        if not self.batch[0] <= batch <= self.batch[1]:
            problems["prompt"] = f"batch {batch} is outside the engine's {self.batch[0]}..{self.batch[1]}"
        for name, side in (("width", width), ("height", height)):
            if not self.size[0] <= side <= self.size[1]:
                problems[name] = f"{name} {side} is outside the engine's {self.size[0]}..{self.size[1]}"
        if problems:
            culprit = next(iter(problems)) if len(problems) == 1 else None  # a parameter only when one is at fault
            raise InputError(f"{'; '.join(problems.values())}; rebuild with: {rebuild}", parameter=culprit,
                             leads=False)


AxisRanges = Callable[[Profile], Mapping[str, tuple[int, int, int]]]  # axis symbol -> (min, opt, max)


@dataclass(frozen=True)
class NetworkContract:
    """The I/O of one network; ``axis_ranges`` turns a user's ``Profile`` into axis sizes."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axis_ranges: AxisRanges = field(compare=False)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: every non-fixed dimension by its symbol."""
        return {spec.name: {index: dim.symbol for index, dim in enumerate(spec.dims) if not isinstance(dim, Fixed)}
                for spec in (*self.inputs, *self.outputs)}

    def sizes_of(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """Axis sizes read off the shapes of a call's inputs."""
        sizes: dict[str, int] = {}
        for spec in self.inputs:
            for dim, size in zip(spec.dims, shapes[spec.name]):
                if isinstance(dim, Axis):
                    sizes.setdefault(dim.symbol, int(size))
        return sizes

    def output_shapes(self, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        sizes = self.sizes_of(input_shapes)
        return {spec.name: spec.shape_at(sizes) for spec in self.outputs}

    def example_sizes(self) -> dict[str, int]:
        return {dim.symbol: dim.example for spec in self.inputs for dim in spec.dims if isinstance(dim, Axis)}

    def sample_inputs(self, generator: torch.Generator,
                      sizes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Fresh random inputs (never zeros) at ``sizes``, by default the example sizes."""
        sizes = {**self.example_sizes(), **(sizes or {})}
        return {spec.name: spec.draw(spec.shape_at(sizes), generator) for spec in self.inputs}

    def profile_shapes(self, profile: Profile) -> dict[str, ShapeRange]:
        """Every input's (min, opt, max) shape: an engine's optimization profile."""
        ranges = self.axis_ranges(profile)
        low, opt, high = ({symbol: triple[corner] for symbol, triple in ranges.items()} for corner in range(3))
        return {spec.name: ShapeRange(spec.shape_at(low), spec.shape_at(opt), spec.shape_at(high))
                for spec in self.inputs}

    def check_shapes(self, shapes: Mapping[str, Sequence[int]], accepted: Mapping[str, ShapeRange]) -> None:
        """Refuse, in one line naming each offending dimension, shapes outside ``accepted``.

        The same dimension usually appears in several inputs (the batch in all five UNet
        inputs); it is reported once.
        """
        if set(shapes) != set(accepted):
            raise ValueError(f"inputs {sorted(shapes)} do not match the engine's {sorted(accepted)}")
        dims = {spec.name: spec.dims for spec in self.inputs}
        problems: dict[str, str] = {}
        for name, shape in shapes.items():
            low, _, high = accepted[name]
            if len(shape) != len(low):
                problems[name] = f"{name} has {len(shape)} dimensions, the engine takes {len(low)}"
                continue
            for dim, size, least, most in zip(dims[name], shape, low, high):
                if least <= size <= most or dim.label in problems:
                    continue
                allowed = f"must be {least}" if least == most else f"is outside the engine's {least}..{most}"
                problems[dim.label] = f"{dim.label} {size} {allowed} ({dim.unit}; input {name})"
        if problems:
            raise UserError(f"{'; '.join(problems.values())}; the engines were built for other shapes: rebuild "
                            "them with sdrt build-engine (--batch, --size and --levels set the ranges)")


@dataclass(frozen=True)
class ModelFacts:
    """What the runtime needs to know of a model without its weights; recorded in manifests."""

    family: str
    text_width: int  # D: features per text position
    vocab_size: int
    vae_scale_factor: int  # image pixels per latent pixel
    default_size: int  # the native image side in pixels
    size_step: int  # image sides must be multiples of this for a traced UNet
    latent_channels: int = 4
    tokens: int = 77  # T: text positions
    pooled_width: int = 0  # P: the pooled text embedding the UNet reads (SDXL), 0 when it reads none
    force_zeros_for_empty_prompt: bool = False  # SDXL: an empty negative prompt is zeros, not encoded ""
    # What the folder's sdrt_defaults.json records for calls that give none; None: SD's usual.
    default_guidance_scale: float | None = None
    default_steps: int | None = None
