"""Where the shapes model's shape words look: heat centroids of their attention maps against the
objects the scorer detects, on every one-object prompt (``sd_struct_rt.shapes.centring``).

Three measures on the same images: maps of the finest cross-attention layers (the measure), of
the coarsest alone, and of all layers (the first one this project used). Seeds 0-7 are where
the finest-layers measure was chosen, after the all-layers one had been seen; seeds 8-15 were
run only after that choice, so they are its confirmation.

    python benchmarks/shapes_attention.py [--seeds 0-7,8-15] [--guidance 3] [--out FILE.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: idle threads must not spin

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sd_struct_rt import StructuredDiffusionPipeline  # noqa: E402
from sd_struct_rt.shapes import world  # noqa: E402
from sd_struct_rt.shapes.centring import LAYER_CHOICES, centring_summary, measure_centring  # noqa: E402
from sd_struct_rt.timing import machine_description, write_results  # noqa: E402


def seed_ranges(text: str) -> dict[str, list[int]]:
    ranges = {}
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            ranges[part] = list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"seed ranges look like 0-7,8-15, not {text!r}") from None
        if not ranges[part]:
            raise argparse.ArgumentTypeError(f"seed range {part!r} is empty")
    return ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_ranges, default="0-7,8-15",
                        help="seed ranges (FIRST-LAST), each one summarised on its own")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "shapes_attention_centring.json")
    args = parser.parse_args()

    pipe = StructuredDiffusionPipeline.from_pretrained("shapes", device="cpu")
    started = time.perf_counter()
    results = {}
    for layers in LAYER_CHOICES:
        for label, seeds in args.seeds.items():
            trials = measure_centring(pipe, world.single_object_prompts(), seeds, layers=layers,
                                      num_inference_steps=args.steps, guidance_scale=args.guidance)
            summary = results[f"{layers} layers, seeds {label}"] = centring_summary(trials)
            low, high = summary["ci95"]
            print(f"{layers} layers, seeds {label}: centred {summary['centred']}/{summary['judged']} = "
                  f"{summary['centred_rate']:.3f} (95% CI {low:.3f}-{high:.3f}); a guess at the image centre: "
                  f"{summary['centre_guess_rate']:.3f}")
    write_results(args.out, {
        "benchmark": "heat centroid of the shape word's attention map within the detected object's radius",
        "machine": machine_description(), "model": "shapes", "steps": args.steps, "guidance": args.guidance,
        "cross_attention_downsampling": list(pipe.check_attention_downsampling("values", None)),
        "seconds": round(time.perf_counter() - started, 1), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
