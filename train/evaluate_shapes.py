"""Score a shapes model with the geometric scorer: single-object accuracy and two-object binding.

    python train/evaluate_shapes.py --model sd_struct_rt/models/shapes --out results.json [--grid grid.png]

Groups, each prompt with ``--seeds`` seeds:

* ``single``: every one-object caption (21), in ``plain`` mode only: a one-object caption is
  a single noun phrase spanning the prompt, so no mode adds a level and all modes coincide;
* ``held_out``: ``--two-object-prompts`` captions, evenly spread over the held-out list (at
  least one colour-shape pair never seen in a two-object training caption);
* ``seen``: as many two-object captions made only of pairs seen in two-object training captions.

Two-object groups run in every ``--modes`` mode. Per group the JSON gives the images with
``exact`` (all objects right, nothing else), ``all_pairs_present`` (binding success, extra
objects allowed) and the count of each outcome of ``sd_struct_rt.shapes.scorer.judge``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_shapes.py: the machine is shared

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sd_struct_rt import StructuredDiffusionPipeline  # noqa: E402
from sd_struct_rt.shapes import scorer, world  # noqa: E402

CHUNK = 48  # prompts per pipeline call


def spread(items: list[str], count: int) -> list[str]:
    """``count`` items evenly spaced through ``items``: every colour and shape gets its share."""
    return [items[i] for i in np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)]


def generate(pipe, prompts: list[str], seeds: int, mode: str, args) -> tuple[list[str], list[int], list[Image.Image]]:
    rows = [(prompt, seed) for prompt in prompts for seed in range(args.first_seed, args.first_seed + seeds)]
    images = []
    for first in range(0, len(rows), CHUNK):
        chunk = rows[first:first + CHUNK]
        images += pipe([prompt for prompt, _ in chunk], seed=[seed for _, seed in chunk], mode=mode,
                       num_inference_steps=args.steps, guidance_scale=args.guidance).images
    return [prompt for prompt, _ in rows], [seed for _, seed in rows], images


def summary(prompts: list[str], seeds: list[int], images: list[Image.Image]) -> dict:
    judgements = [scorer.score_image(prompt, image) for prompt, image in zip(prompts, images)]
    return {
        "images": len(judgements),
        "exact": sum(j.exact for j in judgements),
        "all_pairs_present": sum(j.all_pairs_present for j in judgements),
        "outcomes": dict(Counter(j.outcome for j in judgements).most_common()),
        "per_image": [{"prompt": p, "seed": s, "outcome": j.outcome, "detected": [list(pair) for pair in j.detected]}
                      for p, s, j in zip(prompts, seeds, judgements)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--grid", type=Path, help="also write every image, one row per group, as a PNG")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--two-object-prompts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--modes", nargs="+", default=["plain", "values"])
    args = parser.parse_args()

    pipe = StructuredDiffusionPipeline.from_pretrained(args.model)
    groups = {"single": (world.single_object_prompts(), ["plain"]),
              "held_out": (spread(world.held_out_two_object_prompts(), args.two_object_prompts), args.modes),
              "seen": (spread(world.seen_two_object_prompts(), args.two_object_prompts), args.modes)}
    results, grid_rows, started = {}, [], time.monotonic()
    for group, (prompts, modes) in groups.items():
        for mode in modes:
            rows = generate(pipe, prompts, args.seeds, mode, args)
            results[f"{group}/{mode}"] = summary(*rows)
            grid_rows.append(rows[2])
            brief = {k: v for k, v in results[f"{group}/{mode}"].items() if k != "per_image"}
            print(json.dumps({f"{group}/{mode}": brief}), flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "seconds": round(time.monotonic() - started, 1),
                                    "results": results}, indent=1) + "\n")
    if args.grid:
        width = max(len(row) for row in grid_rows)
        grid = Image.new("RGB", (64 * width, 64 * len(grid_rows)), (128, 128, 128))
        for y, row in enumerate(grid_rows):
            for x, image in enumerate(row):
                grid.paste(image, (64 * x, 64 * y))
        grid.save(args.grid)


if __name__ == "__main__":
    main()
