"""The two offline parsers on the paper's prompt sets: levels per prompt, spelling, and speed.

    python benchmarks/parsers.py [--shared ../shared] [--rounds 15] [--out FILE.json]

For CC-500 lines 1-446 (its two-object half) and all of ABC-6K, with `--parser spacy` and
`--parser scene-graph`: how many prompts get 0, 1, 2, ... levels; whether every level's BPE
tokens spell its phrase (they must); how many prompts the two parsers give the same levels. For
the scene-graph parser, how many prompts the official code's word-index spans misplace (a level
whose CLIP tokens do not spell its text; SPEC 2.7). Then the structure stage's time per prompt
(parse and tokenize, as `generate` runs it) for each parser, interleaved over the same sample
of ABC-6K prompts. The shapes world's captions are compared too: their levels decide
whether `sdrt eval --parser scene-graph` can differ from the default at all.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from sd_struct_rt.model import load_tokenizer
from sd_struct_rt.shapes import world
from sd_struct_rt.structure import analyse
from sd_struct_rt.structure.parsers import make_parser
from sd_struct_rt.text import preprocess
from sd_struct_rt.timing import interleaved, machine_description, write_results

PARSERS = ("spacy", "scene-graph")
SPEED_SAMPLE = 100  # ABC-6K prompts per timed call: every 64th line


def spells(tokenizer, prompt: str, text: str, span: tuple[int, int]) -> bool:
    """True when the prompt's BPE tokens in ``span`` decode to ``text`` (spacing aside)."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids[span[0]:span[1]]
    return "".join(tokenizer.decode(ids).split()) == "".join(text.split())


def levels_of(parser, tokenizer, prompts: list[str]) -> list[tuple[tuple[str, int, int], ...]]:
    return [tuple((span.text, span.start, span.end) for span in analyse(prompt, parser, tokenizer).spans)
            for prompt in prompts]


def dataset_report(parsers: dict, tokenizer, prompts: list[str]) -> dict:
    levels = {name: levels_of(parser, tokenizer, prompts) for name, parser in parsers.items()}
    report = {"prompts": len(prompts), "parsers": {}}
    for name, per_prompt in levels.items():
        misspelled = [(prompt, text) for prompt, found in zip(prompts, per_prompt) for text, start, end in found
                      if not spells(tokenizer, preprocess(prompt), text, (start, end))]
        counts = collections.Counter(len(found) for found in per_prompt)
        report["parsers"][name] = {"levels_per_prompt": {str(k): counts[k] for k in sorted(counts)},
                                   "levels": sum(map(len, per_prompt)), "misspelled_levels": len(misspelled),
                                   "misspelled_examples": misspelled[:5]}
    report["same_levels_both_parsers"] = sum(a == b for a, b in zip(*levels.values()))
    graphs = [parsers["scene-graph"].graph(preprocess(prompt)) for prompt in prompts]
    wrong = [graph.prompt for graph in graphs
             if any(not spells(tokenizer, graph.prompt, text, span) for text, span in graph.official_levels())]
    report["official_word_index_spans"] = {"prompts_with_a_misplaced_level": len(wrong), "examples": wrong[:5]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared",
                        help="folder holding CC-500.txt and ABC-6K.txt")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "parsers_cpu.json")
    args = parser.parse_args()

    tokenizer = load_tokenizer("tiny")  # CLIP's BPE: every SD 1.x tokenizer counts the same tokens
    parsers = {name: make_parser(name) for name in PARSERS}
    abc = (args.shared / "ABC-6K.txt").read_text().splitlines()
    datasets = {"CC-500 lines 1-446": (args.shared / "CC-500.txt").read_text().splitlines()[:446],
                "ABC-6K": abc}
    started = time.perf_counter()
    report = {name: dataset_report(parsers, tokenizer, prompts) for name, prompts in datasets.items()}
    shapes = world.seen_two_object_prompts() + world.held_out_two_object_prompts() + world.single_object_prompts()
    shapes_levels = {name: levels_of(p, tokenizer, shapes) for name, p in parsers.items()}
    sample = abc[::len(abc) // SPEED_SAMPLE][:SPEED_SAMPLE]
    timings = interleaved({name: (lambda p=p: levels_of(p, tokenizer, sample)) for name, p in parsers.items()},
                          warmup=2, rounds=args.rounds)
    result = {
        "benchmark": "parsers on CC-500 and ABC-6K: levels per prompt, spelling, speed",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "datasets": report,
        "shapes_captions": {"prompts": len(shapes),
                            "same_levels_both_parsers": sum(a == b for a, b in zip(*shapes_levels.values()))},
        "structure_stage_ms_per_prompt": {
            name: {"median": round(timing.median_ms / len(sample), 3),
                   "p25": round(timing.spread_ms[0] / len(sample), 3),
                   "p75": round(timing.spread_ms[1] / len(sample), 3), "rounds": len(timing.samples),
                   "prompts_per_round": len(sample)}
            for name, timing in timings.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, result)
    for name, row in result["structure_stage_ms_per_prompt"].items():
        print(f"{name:<12} {row['median']:.2f} ms per prompt (p25-p75 {row['p25']:.2f}-{row['p75']:.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
