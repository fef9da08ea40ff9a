"""``sdrt parse``: which noun phrases of a prompt become levels, with their token spans."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from . import options

EXAMPLE = """examples:
  sdrt parse "a red car and a white sheep"
  sdrt parse "a red car and a white sheep" --json
  sdrt parse --prompts-file prompts.txt --json        # one JSON object per line, one process
  sdrt parse "a cat on a mat" --tree "(ROOT (NP (NP (DT a) (NN cat)) (PP (IN on) (NP (DT a) (NN mat)))))"
  sdrt parse "a red car and a white sheep" --phrase "a white sheep"
  sdrt parse "a dog on a surfboard next to a tree" --parser scene-graph --json   # with the graph

Spans count BPE tokens of the preprocessed prompt from 0, start inclusive, end exclusive,
without the start-of-text token (docs/SPEC.md section 2). Attribute-object pairs are what a
--binding method acts on (section 2.8). With --parser scene-graph the
output also shows the graph: entities with their modifiers, and relations between them."""


def add_to(commands) -> None:
    parser = commands.add_parser(
        "parse", help="show the noun phrases and token spans a prompt gives",
        description="Show which noun phrases of a prompt become levels, with their token spans.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="the prompt to analyse (or use --prompts-file)")
    parser.add_argument("--prompts-file", type=Path, metavar="FILE",
                        help="analyse every line of FILE in one process (the parser loads once)")
    parser.add_argument("--model", default="tiny", help="model whose tokenizer counts tokens [default: tiny]")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per prompt, one per line, instead of a table")
    options.add_structure_options(parser, with_plain=False)
    parser.set_defaults(run=run)


def _analysis(prompt: str, parser, tokenizer) -> tuple[dict, tuple[str, ...]]:
    """The JSON object of one prompt, and the phrases that were found but dropped."""
    from ..structure import analyse
    from ..text import tokenize_with_offsets

    structured = analyse(prompt, parser, tokenizer, pairs=True)
    analysis = {"prompt": structured.prompt,
                "tokens": list(tokenize_with_offsets(tokenizer, structured.prompt).tokens),
                "phrases": [{"text": span.text, "span": [span.start, span.end]} for span in structured.spans],
                "dropped": list(structured.dropped),
                "pairs": [{"object": {"text": pair.object.text, "span": [pair.object.start, pair.object.end]},
                           "attributes": [{"text": part.text, "span": [part.start, part.end]}
                                          for part in pair.attributes]} for pair in structured.pairs]}
    if callable(getattr(parser, "graph", None)):
        analysis["graph"] = parser.graph(structured.prompt).as_json()
    return analysis, structured.dropped


def _print_table(analysis: dict, dropped: tuple[str, ...], parser) -> None:
    from ..structure.spans import quoted_list

    print(f"prompt: {analysis['prompt']}")
    print(f"tokens: {' '.join(f'{i}:{token}' for i, token in enumerate(analysis['tokens']))}")
    graph = analysis.get("graph")
    for entity in graph["entities"] if graph else ():
        modifiers = ", ".join(modifier["text"] for modifier in entity["modifiers"])
        print(f"entity: {entity['text']}" + (f"  ({modifiers})" if modifiers else ""))
    for relation in graph["relations"] if graph else ():
        subject, object_ = (graph["entities"][relation[end]]["text"] for end in ("subject", "object"))
        print(f"relation: {subject} -[{relation['relation']}]-> {object_}")
    for level, phrase in enumerate(analysis["phrases"], start=1):
        print(f"level {level}: [{phrase['span'][0]:>2}, {phrase['span'][1]:>2})  {phrase['text']}")
    for pair in analysis["pairs"]:
        print(f"pair: {' '.join(part['text'] for part in pair['attributes'])} -> {pair['object']['text']}  "
              "(what --binding acts on)")
    if dropped:
        print(f"dropped: {quoted_list(dropped, limit=len(dropped))} (they start after the tokens CLIP reads)")
    elif not analysis["phrases"]:
        if parser.phrases(analysis["prompt"]):
            print("no levels: the only noun phrase is the whole prompt, which is level 0 already (plain SD)")
        else:
            print("no levels: no noun phrase of two or more words (plain SD)")


def run(args) -> None:
    from .. import inputs
    from ..model import load_tokenizer
    from .generate import read_prompts_file

    if (args.prompt is None) == (args.prompts_file is None):
        raise UserError("give either a prompt or --prompts-file FILE, not both and not neither")
    prompts = ([inputs.text(args.prompt, "the prompt")] if args.prompts_file is None
               else read_prompts_file(args.prompts_file))
    parser = options.chosen_parser(args)
    tokenizer = load_tokenizer(args.model)
    for number, prompt in enumerate(prompts):
        analysis, dropped = _analysis(prompt, parser, tokenizer)
        if args.json:
            print(json.dumps(analysis, ensure_ascii=False), flush=True)
        else:
            if number:
                print()
            _print_table(analysis, dropped, parser)
