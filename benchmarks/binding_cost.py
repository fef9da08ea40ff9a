"""What a text-side binding method costs: the conditioning step (SPEC 3) with and without it.

    python benchmarks/binding_cost.py [--rounds 15] [--out FILE.json]

The binding methods add no UNet rows; their only cost is the texts they encode besides the
prompt (in the same text-encoder call) and the edit itself. Timed here: building one prompt's
conditioning in values mode (text encoder call, levels, binding), interleaved over none, magnet
and tome, for prompts of two and four attribute-object pairs, on two text encoders: the shapes
model's own and SD 1.5's CLIP ViT-L/14 text encoder at its real size (public config, seeded
random weights: the time does not depend on the weights).

Also measured: how large Magnet's edit is against the state it edits, at each object's token,
over the shapes world's held-out captions on both shapes models (the README's "why").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from sd_struct_rt import StructuredDiffusionPipeline
from sd_struct_rt.binding import BINDINGS
from sd_struct_rt.conditioning import build_conditioning
from sd_struct_rt.families.sd1 import TextEmbeddings
from sd_struct_rt.model import load_model, load_tokenizer
from sd_struct_rt.shapes import world
from sd_struct_rt.structure import analyse
from sd_struct_rt.structure.parsers import make_parser
from sd_struct_rt.text import token_ids
from sd_struct_rt.timing import interleaved, machine_description, ratio, write_results

PROMPTS = ("a red circle and a blue square",
           "a red car, a white sheep, a green bench and a yellow bird")
SD15_TEXT_ENCODER = Path(__file__).parent / "configs" / "sd15" / "text_encoder" / "config.json"


def encoders() -> dict:
    torch.manual_seed(0)
    sd15 = CLIPTextModel(CLIPTextConfig(**json.loads(SD15_TEXT_ENCODER.read_text()))).eval()
    return {"shapes": (load_model("shapes").text_encoder.eval(), load_tokenizer("shapes")),
            "sd15 (CLIP ViT-L/14, real size)": (sd15, load_tokenizer("tiny"))}


def magnet_edit_sizes(model: str) -> dict:
    """Norm of Magnet's edit over the norm of the state it edits, at every pair's object token."""
    pipe = StructuredDiffusionPipeline.from_pretrained(model)
    ratios = []
    for prompt in world.held_out_two_object_prompts():
        request = pipe.check_inputs(prompt, mode="plain")
        (structured,) = pipe.structure(pipe.check_inputs(prompt, mode="plain", binding="magnet"))
        plain = pipe.condition([structured], request).level_states[1, 0]
        bound = pipe.condition([structured], pipe.check_inputs(prompt, mode="plain", binding="magnet"))
        for pair in structured.pairs:
            position = pair.object.end
            edit = bound.level_states[1, 0, position] - plain[position]
            ratios.append(float(edit.norm() / plain[position].norm()))
    return {"model": model, "objects": len(ratios), "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "binding_cost_cpu.json")
    args = parser.parse_args()

    spacy = make_parser("spacy")
    rows = []
    for name, (text_encoder, tokenizer) in encoders().items():
        embed = TextEmbeddings(text_encoder)

        @torch.inference_mode()
        def encode(texts, embed=embed, tokenizer=tokenizer):
            return embed(token_ids(tokenizer, texts)), None

        def count(text, tokenizer=tokenizer):
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        for prompt in PROMPTS:
            structured = analyse(prompt, spacy, tokenizer, pairs=True)
            candidates = {"none": lambda s=structured: build_conditioning(encode, [s], [""], "values")}
            for method in BINDINGS.values():
                candidates[method.name] = (lambda s=structured, m=method:
                                           build_conditioning(encode, [s], [""], "values", m, count))
            timings = interleaved(candidates, warmup=3, rounds=args.rounds)
            rows.append({"text_encoder": name, "prompt": prompt, "pairs": len(structured.pairs),
                         "levels": len(structured.spans) + 1,
                         "extra_texts": {method.name: len(method.texts(structured)) for method in BINDINGS.values()},
                         "conditioning": {key: timing.as_dict() for key, timing in timings.items()},
                         "over_none": {key: round(ratio(timings, key, "none"), 3) for key in BINDINGS}})
            print(f"{name:<32} {structured.pairs and len(structured.pairs)} pairs: " + ", ".join(
                f"{key} {timing.median_ms:.2f} ms" for key, timing in timings.items()))
    sizes = [magnet_edit_sizes(model) for model in ("shapes", "shapes-clip")]
    for size in sizes:
        print(f"magnet edit / state at the object token, {size['model']}: median {size['median']}")
    write_results(args.out, {"benchmark": "conditioning with and without a binding method (values mode, 1 prompt)",
                             "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "rows": rows,
                             "magnet_edit_over_state_norm": sizes})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
