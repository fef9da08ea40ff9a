"""Where the shapes model's shape words look: heat centroids of their attention maps against the
objects the scorer detects, on every one-object prompt (``sd_struct_rt.shapes.centring``).

    python benchmarks/shapes_attention.py [--seeds 8] [--guidance 3] [--out FILE.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: idle threads must not spin

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sd_struct_rt import StructuredDiffusionPipeline  # noqa: E402
from sd_struct_rt.shapes import world  # noqa: E402
from sd_struct_rt.shapes.centring import centring_summary, measure_centring  # noqa: E402
from sd_struct_rt.timing import machine_description, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "shapes_attention_centring.json")
    args = parser.parse_args()

    pipe = StructuredDiffusionPipeline.from_pretrained("shapes", device="cpu")
    started = time.perf_counter()
    trials = measure_centring(pipe, world.single_object_prompts(), list(range(args.seeds)),
                              num_inference_steps=args.steps, guidance_scale=args.guidance)
    summary = centring_summary(trials)
    write_results(args.out, {
        "benchmark": "heat centroid of the shape word's attention map within the detected object's radius",
        "machine": machine_description(), "model": "shapes", "seeds": args.seeds, "steps": args.steps,
        "guidance": args.guidance, "seconds": round(time.perf_counter() - started, 1), **summary})
    low, high = summary["ci95"]
    print(f"centred {summary['centred']}/{summary['judged']} = {summary['centred_rate']:.3f} "
          f"(95% CI {low:.3f}-{high:.3f}); a guess at the image centre: {summary['centre_guess_rate']:.3f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
