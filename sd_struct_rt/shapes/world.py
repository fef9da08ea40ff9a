"""A world where attribute binding is checkable by geometry: one or two coloured shapes on white.

Every scene is 64x64 pixels: a white background and one or two non-overlapping, axis-aligned
shapes (circle, square, upright triangle), each in one of seven colours chosen far apart in
CIELAB (the closest pair, blue and purple, is 41 apart in ΔE76). All three shapes fill the same
square box of side ``2 * half_size`` around their centre, so size says nothing about the shape.
Captions follow CC-500's template: "a red circle" or "a red circle and a blue square".

Two objects in one scene always differ in colour and in shape, so every two-object caption is
a binding question: swapping the colours gives two other objects, never the same picture.

Held-out pairs. ``HELD_OUT_PAIRS`` (one colour-shape pair per colour, shapes spread 3/2/2)
never appear in a two-object training caption; they do appear alone ("a green circle"), so
the model knows each held-out pair but has never seen it bound next to another object.
``held_out_two_object_prompts`` are the two-object captions with at least one held-out pair
(both orders of each couple): binding measured on these is binding on unseen combinations.

Everything here is numpy and PIL, and a pure function of its arguments and the generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import permutations
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
PALETTE = {
    "red": (220, 35, 35),
    "yellow": (240, 205, 20),
    "green": (35, 160, 60),
    "cyan": (20, 185, 200),
    "blue": (40, 70, 215),
    "purple": (180, 40, 190),
    "black": (30, 30, 30),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
HELD_OUT_PAIRS = frozenset({
    ("red", "square"), ("yellow", "triangle"), ("green", "circle"), ("cyan", "square"),
    ("blue", "triangle"), ("purple", "circle"), ("black", "square"),
})
# Half the side of a shape's box, in pixels: the smallest triangle still covers about 100
# pixels, enough for the scorer to measure its fill ratio; two of the largest still fit.
HALF_SIZE_RANGE = (7, 12)
# Empty pixels between two shapes' boxes, and between a box and the image border: keeps
# blurry generated shapes apart and the border free for the scorer's background estimate.
GAP = 3
MARGIN = 2
SUPERSAMPLING = 4
SPLITS = ("train", "held_out", "any")
_CAPTION_OBJECT = re.compile(rf"an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


class Geometry(NamedTuple):
    x: int  # centre, pixels from the left
    y: int  # centre, pixels from the top
    half_size: int


class SceneObject(NamedTuple):
    colour: str
    shape: str
    geometry: Geometry

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(obj.pair for obj in self.objects)


def all_pairs() -> list[tuple[str, str]]:
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def can_share_a_scene(first: tuple[str, str], second: tuple[str, str]) -> bool:
    return first[0] != second[0] and first[1] != second[1]


def two_object_couples(split: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Ordered couples of pairs that may form a two-object scene of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    couples = [(a, b) for a, b in permutations(all_pairs(), 2) if can_share_a_scene(a, b)]
    if split == "any":
        return couples
    unseen = [(a, b) for a, b in couples if a in HELD_OUT_PAIRS or b in HELD_OUT_PAIRS]
    return unseen if split == "held_out" else [couple for couple in couples if couple not in unseen]


def caption_of(pairs: Sequence[tuple[str, str]]) -> str:
    return " and ".join(f"a {colour} {shape}" for colour, shape in pairs)


def caption(scene: Scene) -> str:
    return caption_of(scene.pairs)


def parse_caption(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a caption asks for, in order; ``ValueError`` if it is not one of ours."""
    parts = text.lower().strip().strip(".").strip().split(" and ")
    matches = [_CAPTION_OBJECT.fullmatch(part.strip()) for part in parts]
    if not all(matches):
        raise ValueError(f"{text!r} is not a shapes caption such as 'a red circle and a blue square'")
    return [(match.group(1), match.group(2)) for match in matches]


def single_object_prompts() -> list[str]:
    return [caption_of([pair]) for pair in all_pairs()]


def seen_two_object_prompts() -> list[str]:
    return [caption_of(couple) for couple in two_object_couples("train")]


def held_out_two_object_prompts() -> list[str]:
    return [caption_of(couple) for couple in two_object_couples("held_out")]


def _box(geometry: Geometry) -> tuple[int, int, int, int]:
    x, y, half = geometry
    return x - half, y - half, x + half, y + half


def _apart(a: Geometry, b: Geometry) -> bool:
    (left_a, top_a, right_a, bottom_a), (left_b, top_b, right_b, bottom_b) = _box(a), _box(b)
    return (left_a - right_b >= GAP or left_b - right_a >= GAP
            or top_a - bottom_b >= GAP or top_b - bottom_a >= GAP)


def place(pairs: Sequence[tuple[str, str]], rng: np.random.Generator) -> Scene:
    """A scene of ``pairs`` at random sizes and positions, boxes apart by ``GAP`` pixels."""
    low, high = HALF_SIZE_RANGE
    while True:  # rejection: two of the largest shapes fit side by side, so this ends quickly
        placed: list[SceneObject] = []
        for colour, shape in pairs:
            half = int(rng.integers(low, high + 1))
            x, y = (int(v) for v in rng.integers(MARGIN + half, IMAGE_SIZE - MARGIN - half, size=2, endpoint=True))
            geometry = Geometry(x, y, half)
            if not all(_apart(geometry, other.geometry) for other in placed):
                break
            placed.append(SceneObject(colour, shape, geometry))
        else:
            return Scene(tuple(placed))


def sample_scene(rng: np.random.Generator, object_count: int | None = None, split: str = "train",
                 single_fraction: float = 0.5) -> Scene:
    """A random scene; ``object_count`` None draws one object with ``single_fraction``, else two.

    ``split`` decides the two-object pairs: ``train`` never uses a held-out pair, ``held_out``
    always uses at least one, ``any`` all. One-object scenes use every pair in every split.
    """
    if object_count is None:
        object_count = 1 if rng.random() < single_fraction else 2
    if object_count == 1:
        pairs = all_pairs()
        return place([pairs[int(rng.integers(len(pairs)))]], rng)
    if object_count != 2:
        raise ValueError(f"a scene holds one or two objects, not {object_count}")
    couples = two_object_couples(split)
    return place(couples[int(rng.integers(len(couples)))], rng)


def render(scene: Scene) -> np.ndarray:
    """``[64, 64, 3]`` uint8 RGB; edges anti-aliased by drawing at 4x and averaging down."""
    scale = SUPERSAMPLING
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for colour, shape, geometry in scene.objects:
        left, top, right, bottom = (v * scale for v in _box(geometry))
        # PIL includes the last pixel of a box; one less makes every shape exactly 2*half wide.
        right, bottom = right - 1, bottom - 1
        fill = PALETTE[colour]
        if shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
