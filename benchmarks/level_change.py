"""How much the phrase levels change what cross-attention reads, on a model's prompts.

    python benchmarks/level_change.py [--model shapes] [--out FILE.json]

For each prompt (the shapes world's held-out two-object captions), in ``values`` mode: for each
phrase level, the token positions where it differs from the full prompt's encoding, and the
relative change (Frobenius) that averaging all levels makes to the value tensor. CLIP's text
encoder is causal, so a phrase that opens the prompt encodes exactly as it does inside it; only
later phrases can differ, and only over their own tokens.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from sd_struct_rt import StructuredDiffusionPipeline
from sd_struct_rt.shapes import world
from sd_struct_rt.timing import machine_description, write_results

SAME = 1e-5  # relative difference per position below which a level reads as the full prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shapes_level_change.json")
    args = parser.parse_args()

    pipe = StructuredDiffusionPipeline.from_pretrained(args.model, device="cpu")
    rows = []
    for prompt in world.held_out_two_object_prompts():
        request = pipe.check_inputs(prompt, mode="values")
        structured = pipe.structure(request)
        conditioning = pipe.condition(structured, request)
        full, levels = conditioning.encoder_hidden_states[-1], conditioning.level_states[-1]
        count = int(conditioning.level_mask[-1].sum())
        per_position = (levels[1:count] - full).norm(dim=-1) / full.norm(dim=-1)
        changed = [torch.nonzero(change > SAME).flatten().tolist() for change in per_position]
        spans = [(span.start + 1, span.end) for span in structured[0].spans]  # positions, BOS at 0
        rows.append({"prompt": prompt, "phrase_positions": spans, "changed_positions": changed,
                     "value_change": round(float((levels[:count].mean(0) - full).norm() / full.norm()), 4)})
    phrases = [(positions, span) for row in rows for positions, span in zip(row["changed_positions"],
                                                                            row["phrase_positions"])]
    first = [positions for row in rows for positions in row["changed_positions"][:1]]
    result = {
        "benchmark": "values mode: where phrase levels differ from the full prompt's encoding",
        "machine": machine_description(), "model": args.model, "prompts": len(rows),
        "first_phrases_identical": sum(not positions for positions in first), "first_phrases": len(first),
        "changes_inside_their_phrase": sum(all(span[0] <= p <= span[1] for p in positions)
                                           for positions, span in phrases),
        "phrases": len(phrases),
        "positions_changed_per_prompt": statistics.mean(sum(map(len, row["changed_positions"])) for row in rows),
        "median_value_change": statistics.median(row["value_change"] for row in rows),
        "rows": rows,
    }
    write_results(args.out, result)
    print(f"{result['first_phrases_identical']}/{result['first_phrases']} first phrases encode as in the prompt; "
          f"{result['positions_changed_per_prompt']:.2f} of 77 positions change per prompt; median relative "
          f"change of the values {result['median_value_change']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
