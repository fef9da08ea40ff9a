"""A weight-free detector for the shapes world, and the judge of a prompt against its detections.

Detection, tolerant of the blur and noise of generated images:

1. the background is the median colour of the image border (generated backgrounds are rarely
   exactly white);
2. foreground pixels differ from it by more than ``FOREGROUND_DISTANCE`` in RGB; about half
   the distance of the palette's faintest colour from white, so anti-aliased edges split
   evenly and every colour's mask has its true size;
3. a 3x3 opening removes specks and one-pixel bridges; 4-connected components smaller than
   ``MIN_AREA`` pixels are noise;
4. colour: the median RGB of a component's interior (its edge pixels are blends with the
   background) named by the nearest palette colour in CIELAB, or ``none`` when that is more
   than ``COLOUR_TOLERANCE`` away;
5. shape, from two measures of the component against its bounding box: the fill ratio
   (circle pi/4, square 1, triangle 1/2) and how far down the mass sits (an upright
   triangle's centroid is 2/3 of the way down, a circle's or square's half way). A box far
   from square (two shapes run together) is ``none``.

Judging (``judge``): the prompt's pairs against the detected pairs, as multisets.
``exact`` when they are equal (every object found with its colour and shape, nothing else);
``all_pairs_present`` (binding success) when every requested pair is among the detections,
extra objects allowed. ``outcome`` names the first of these that holds: ``exact``,
``extra_objects`` (all pairs present, more objects), ``colour_swap`` (as many objects, the
right colours and the right shapes, bound to each other wrongly), ``colour_leak`` (as many
objects, the right shapes, every colour one the prompt names but not each on its own object:
"a red circle and a blue square" drawn as two red shapes), ``missing_object`` (fewer objects
than asked for), ``wrong_attribute`` (anything else). Swaps and leaks are the binding
failures structured guidance targets; the others are failures to draw.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..evaluation import Score
from .world import PALETTE, parse_caption

FOREGROUND_DISTANCE = 100.0
MIN_AREA = 30
COLOUR_TOLERANCE = 45.0
# Two shapes that run together make a wide or tall box; a single shape's box is square.
MAX_ASPECT = 1.6
# Fill ratios halfway between triangle (0.5) and circle (0.785), and between circle and square (1).
TRIANGLE_BELOW = 0.64
SQUARE_ABOVE = 0.89
# Centroid depth in the box: 0.5 for circles and squares, 2/3 for an upright triangle.
TRIANGLE_DEPTH = 0.58
NONE = "none"
OUTCOMES = ("exact", "extra_objects", "colour_swap", "colour_leak", "missing_object", "wrong_attribute")
# Outcomes where every object was drawn, with colours from the prompt bound to the wrong ones.
BINDING_FAILURES = ("colour_swap", "colour_leak")


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    centroid: tuple[float, float]  # x, y in pixels
    area: int

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclass(frozen=True)
class Judgement:
    requested: tuple[tuple[str, str], ...]
    detected: tuple[tuple[str, str], ...]
    outcome: str

    @property
    def exact(self) -> bool:
        return self.outcome == "exact"

    @property
    def all_pairs_present(self) -> bool:
        return self.outcome in ("exact", "extra_objects")


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-255, any leading shape) to CIELAB under D65."""
    linear = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_LAB = to_lab(np.array([PALETTE[name] for name in _PALETTE_NAMES]))


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float64)[..., :3]


def _shifted(mask: np.ndarray, dy: int, dx: int, fill: bool) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=fill)
    return padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]


_NEIGHBOURHOOD = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _erode(mask: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([_shifted(mask, dy, dx, True) for dy, dx in _NEIGHBOURHOOD])


def _dilate(mask: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce([_shifted(mask, dy, dx, False) for dy, dx in _NEIGHBOURHOOD])


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels (0 is background) by propagating each pixel's smallest index to a fixed point."""
    height, width = mask.shape
    big = height * width + 1
    labels = np.where(mask, np.arange(1, big).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        smallest = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                      padded[1:-1, 2:]])
        smallest = np.where(mask, smallest, big)
        if np.array_equal(smallest, labels):
            return np.where(mask, labels, 0)
        labels = smallest


def name_colour(rgb: Sequence[float]) -> str:
    distances = np.linalg.norm(_PALETTE_LAB - to_lab(np.asarray(rgb)), axis=-1)
    nearest = int(np.argmin(distances))
    return _PALETTE_NAMES[nearest] if distances[nearest] <= COLOUR_TOLERANCE else NONE


def name_shape(component: np.ndarray) -> str:
    rows, columns = np.nonzero(component)
    top, left = rows.min(), columns.min()
    height, width = rows.max() - top + 1, columns.max() - left + 1
    if max(height, width) > MAX_ASPECT * min(height, width):
        return NONE
    fill = rows.size / (height * width)
    # Pixel centres run from 0.5 to height - 0.5 pixels below the box top.
    depth = (rows.mean() - top + 0.5) / height
    if fill < TRIANGLE_BELOW or depth > TRIANGLE_DEPTH:
        return "triangle"
    return "square" if fill > SQUARE_ABOVE else "circle"


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """The shapes in an RGB image, largest first."""
    rgb = _as_rgb_array(image)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(rgb - background, axis=-1) > FOREGROUND_DISTANCE
    foreground = _dilate(_erode(foreground))
    labels = _components(foreground)
    detections = []
    for label in np.unique(labels[labels > 0]):
        component = labels == label
        area = int(component.sum())
        if area < MIN_AREA:
            continue
        interior = _erode(component)
        pixels = rgb[interior if interior.any() else component]
        rows, columns = np.nonzero(component)
        detections.append(Detection(name_colour(np.median(pixels, axis=0)), name_shape(component),
                                    (float(columns.mean()), float(rows.mean())), area))
    return sorted(detections, key=lambda detection: -detection.area)


def _colours(pairs: Counter) -> Counter:
    return Counter(colour for colour, _ in pairs.elements())


def _shapes(pairs: Counter) -> Counter:
    return Counter(shape for _, shape in pairs.elements())


def judge(prompt: str, detections: Sequence[Detection]) -> Judgement:
    """How the detections answer ``prompt`` (a shapes caption); the rule is in the module docstring."""
    requested = Counter(parse_caption(prompt))
    detected = Counter(detection.pair for detection in detections)
    if detected == requested:
        outcome = "exact"
    elif not requested - detected:
        outcome = "extra_objects"
    elif detected.total() == requested.total() and _shapes(detected) == _shapes(requested) \
            and _colours(detected) == _colours(requested):
        outcome = "colour_swap"
    elif detected.total() == requested.total() and _shapes(detected) == _shapes(requested) \
            and set(_colours(detected)) <= set(_colours(requested)):
        outcome = "colour_leak"
    elif detected.total() < requested.total():
        outcome = "missing_object"
    else:
        outcome = "wrong_attribute"
    return Judgement(tuple(requested.elements()), tuple(detection.pair for detection in detections), outcome)


def score_image(prompt: str, image: Image.Image | np.ndarray) -> Judgement:
    return judge(prompt, detect(image))


class ShapesScorer:
    """The ``sdrt eval`` scorer of the shapes world: success is every requested pair detected."""

    name = "shapes"

    def check(self, prompt: str) -> None:
        try:
            parse_caption(prompt)
        except ValueError as error:
            raise InputError(f"the shapes scorer cannot judge this prompt: {error}") from None

    def score(self, prompt: str, image: Image.Image) -> Score:
        self.check(prompt)
        judgement = score_image(prompt, image)
        return Score(judgement.all_pairs_present, judgement.outcome,
                     {"requested": [list(pair) for pair in judgement.requested],
                      "detected": [list(pair) for pair in judgement.detected]})
