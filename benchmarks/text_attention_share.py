"""Which text positions the UNet's cross-attention reads: the start token, the prompt's own words,
or the end-of-text token and the padding after it, on each shapes model.

Structured guidance rewrites only the positions of the phrases' words (SPEC 3.2). In a causal
CLIP the end-of-text token and every padding position after it have seen the whole prompt, and
a contrastively trained tower pools exactly there, so those positions hold a summary of the
prompt that no level changes. This measures how much of the attention goes to each kind of
position, in plain mode, on the held-out two-object prompts; and how much each kind of position
changes when the prompt's two colours are swapped (a bag of words would not change at all).

    python benchmarks/text_attention_share.py [--seeds 2] [--out FILE.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: idle threads must not spin

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sd_struct_rt import StructuredDiffusionPipeline  # noqa: E402
from sd_struct_rt.attention import AttentionRecorder  # noqa: E402
from sd_struct_rt.shapes import MODELS, world  # noqa: E402
from sd_struct_rt.text import token_count  # noqa: E402
from sd_struct_rt.timing import machine_description, write_results  # noqa: E402

KINDS = ("start", "colour_words", "shape_words", "other_words", "end", "padding")


def position_kinds(pipe, prompt: str) -> list[str]:
    """The kind of each of the 77 text positions of ``prompt``."""
    words = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt, add_special_tokens=False).input_ids)
    content = ["colour_words" if word.removesuffix("</w>") in world.COLOURS else
               "shape_words" if word.removesuffix("</w>") in world.SHAPES else "other_words" for word in words]
    assert len(content) == token_count(pipe.tokenizer, prompt)
    kinds = ["start", *content, "end"]
    return kinds + ["padding"] * (pipe.tokenizer.model_max_length - len(kinds))


def attention_shares(model: str, prompts: list[str], seeds: list[int], batch: int = 8) -> dict:
    pipe = StructuredDiffusionPipeline.from_pretrained(model, device="cpu")
    per_image = []
    for first in range(0, len(prompts), batch):
        chunk = prompts[first:first + batch]
        for seed in seeds:
            side = pipe.default_size // pipe.facts.vae_scale_factor
            recorder = AttentionRecorder(side, side)
            with pipe.recording_unet("values").recording(recorder):
                pipe(chunk, seed=[seed] * len(chunk), mode="plain")
            shares = recorder.maps().mean(dim=(2, 3))  # [prompts, 77]: each row sums to 1
            for prompt, row in zip(chunk, shares):
                totals = dict.fromkeys(KINDS, 0.0)
                for kind, share in zip(position_kinds(pipe, prompt), row.tolist()):
                    totals[kind] += share
                per_image.append(totals)
    return {kind: round(statistics.fmean(image[kind] for image in per_image), 4) for kind in KINDS} | {
        "images": len(per_image)}


def swap_sensitivity(model: str, prompts: list[str]) -> dict:
    """Mean relative change of the text encoder's states, per kind of position, between each
    prompt and the same prompt with its two colours swapped."""
    import torch

    pipe = StructuredDiffusionPipeline.from_pretrained(model, device="cpu")
    swapped = []
    for prompt in prompts:
        (first_colour, first_shape), (second_colour, second_shape) = world.parse_caption(prompt)
        swapped.append(world.caption_of([(second_colour, first_shape), (first_colour, second_shape)]))
    with torch.no_grad():
        states, _ = pipe.encode_texts(prompts + swapped)
    changes: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for index, prompt in enumerate(prompts):
        ours, theirs = states[index], states[len(prompts) + index]
        kinds = position_kinds(pipe, prompt)
        for kind in KINDS:
            rows = [position for position, each in enumerate(kinds) if each == kind]
            if rows:
                changes[kind].append(float((ours[rows] - theirs[rows]).norm() / ours[rows].norm()))
    return {kind: round(statistics.fmean(values), 4) for kind, values in changes.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per prompt")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shapes_text_attention.json")
    args = parser.parse_args()
    prompts, seeds = world.held_out_two_object_prompts(), list(range(args.seeds))
    started = time.perf_counter()
    results = {}
    for model in MODELS:
        results[model] = {"attention_share": attention_shares(model, prompts, seeds),
                          "relative_change_when_colours_swap": swap_sensitivity(model, prompts)}
        print(model, results[model])
    write_results(args.out, {
        "benchmark": "share of cross-attention probability on each kind of text position, plain mode, all layers "
                     "and steps, conditional rows, held-out two-object prompts",
        "machine": machine_description(), "seeds": seeds, "prompts": len(prompts), "settings": "each model's own "
        "defaults (30 steps, guidance 3)", "seconds": round(time.perf_counter() - started, 1), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
