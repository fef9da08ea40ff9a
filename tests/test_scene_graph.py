"""The scene-graph parser (SPEC 2.7): the official function's levels, aligned by characters."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from sd_struct_rt.cli import main
from sd_struct_rt.image import read_png_metadata
from sd_struct_rt.structure import analyse
from sd_struct_rt.structure.parsers import DEFAULT_SPACY_MODEL, make_parser
from sd_struct_rt.structure.scene_graph import Entity, Relation, SceneGraph, SceneGraphParser
from sd_struct_rt.structure.spans import Phrase
from sd_struct_rt.text import preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared"
LONG_PROMPT = ("a red car and a white sheep next to a tall tree, " * 30)[:1000]
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--quiet", "--seed", "5"]


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser(DEFAULT_SPACY_MODEL)


@pytest.fixture(scope="module")
def tiny_pipe():
    from sd_struct_rt import StructuredDiffusionPipeline

    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


def levels(prompt, parser, tokenizer):
    return [(span.text, span.start, span.end) for span in analyse(prompt, parser, tokenizer).spans]


def spells(tokenizer, prompt: str, text: str, span: tuple[int, int]) -> bool:
    """The prompt's BPE tokens in ``span`` decode to ``text``, spacing aside."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids[span[0]:span[1]]
    return "".join(tokenizer.decode(ids).split()) == "".join(text.split())


def test_entities_then_relations_from_subject_to_object(parser, tiny):
    assert levels("A dog on a surfboard next to a tall tree.", parser, tiny.tokenizer) == [
        ("a dog", 0, 2), ("a surfboard", 3, 6), ("a tall tree", 8, 11),
        ("a dog on a surfboard", 0, 6), ("a surfboard next to a tall tree", 3, 11)]


def test_level_rules_on_a_given_graph():
    prompt = "cats and a dog on a big mat"

    def entity(text, words):
        start = prompt.index(text)
        return Entity(Phrase(start, start + len(text)), words, text.split()[-1], ())

    graph = SceneGraph(prompt, (entity("cats", (0, 1)), entity("a dog", (2, 4)), entity("a big mat", (5, 8))),
                       (Relation(1, 2, "on"), Relation(2, 1, "under"), Relation(0, 0, "is")))
    texts = [prompt[phrase.start_char:phrase.end_char] for phrase in graph.levels()]
    # one-word entity out; the object-first relation reaches from the earlier entity; the repeat
    # is dropped; a relation of one entity with itself is that entity's range
    assert texts == ["a dog", "a big mat", "a dog on a big mat", "cats"]
    assert graph.official_levels() == [("a dog", (2, 4)), ("a big mat", (5, 8)), ("a dog on a big mat", (2, 8)),
                                       ("a dog on a big mat", (2, 8)), ("cats", (0, 1))]


@pytest.mark.parametrize("prompt, official_text", [
    # two BPE tokens, then a comma: every later span moves, and the relation loses a word
    ("a surfboard, a dog on the beach", "dog on the beach"),
    # "horse." is one whitespace word but two spaCy tokens
    ("a man riding a horse. a dog under a tree", "dog under a tree"),
    ("a skateboarder holding a skateboard near a fire hydrant", None),  # only the spans move
])
def test_the_official_word_indices_misplace_levels_and_ours_spell_them(parser, tiny, prompt, official_text):
    graph = parser.graph(preprocess(prompt))
    official = graph.official_levels()
    assert official and not all(spells(tiny.tokenizer, graph.prompt, text, span) for text, span in official)
    ours = levels(prompt, parser, tiny.tokenizer)
    assert ours and all(spells(tiny.tokenizer, graph.prompt, text, (start, end)) for text, start, end in ours)
    if official_text is not None:
        assert official_text in [text for text, _ in official]
        assert official_text not in graph.prompt.split(", ") and "a " + official_text in [text for text, *_ in ours]


def single_token_words(tokenizer, prompt: str) -> bool:
    """Where the official word indices are token positions: one BPE token per word, one space between."""
    words = prompt.split()
    return " ".join(words) == prompt and all(map(str.isalpha, words)) and len(tokenizer.tokenize(prompt)) == len(words)


def test_ours_equal_the_official_where_words_are_single_tokens(parser, tiny):
    for prompt in ("a red car next to a white sheep on the grass", "a woman is playing the piano in the room",
                   "the man with a hat riding a horse", "a bowl with an apple in it on a table"):
        assert single_token_words(tiny.tokenizer, prompt)
        official = list(dict.fromkeys((text, *span) for text, span in parser.graph(prompt).official_levels()))
        assert levels(prompt, parser, tiny.tokenizer) == official, prompt


@pytest.mark.skipif(not (SHARED / "ABC-6K.txt").is_file(), reason="needs shared/ABC-6K.txt and CC-500.txt")
def test_cc500_and_abc6k_parse_and_every_level_spells_its_phrase(parser, tiny):
    prompts = (SHARED / "CC-500.txt").read_text().splitlines()[:446] + (SHARED / "ABC-6K.txt").read_text().splitlines()
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning on any of them
        for spacy_levels, prompt in zip(map(lambda p: levels(p, make_parser("spacy"), tiny.tokenizer), prompts),
                                        prompts):
            text = preprocess(prompt)
            ours = levels(prompt, parser, tiny.tokenizer)
            for text_, start, end in ours + spacy_levels:
                assert spells(tiny.tokenizer, text, text_, (start, end)), (prompt, text_)
            if single_token_words(tiny.tokenizer, text):
                official = parser.graph(text).official_levels()
                assert ours == list(dict.fromkeys((t, *span) for t, span in official)), prompt
                compared += 1
    assert compared > 1000


def test_parse_json_shows_the_graph(capsys):
    assert main(["parse", "a dog on a surfboard next to a tall tree", "--parser", "scene-graph", "--json"]) == 0
    analysis = json.loads(capsys.readouterr().out)
    graph = analysis["graph"]
    assert [entity["text"] for entity in graph["entities"]] == ["a dog", "a surfboard", "a tall tree"]
    assert graph["entities"][2]["modifiers"] == [{"dep": "det", "text": "a"}, {"dep": "amod", "text": "tall"}]
    assert graph["entities"][2]["characters"] == [29, 40] and graph["entities"][2]["head"] == "tree"
    assert graph["relations"] == [
        {"subject": 0, "object": 1, "relation": "on", "text": "a dog on a surfboard"},
        {"subject": 1, "object": 2, "relation": "next to", "text": "a surfboard next to a tall tree"}]
    assert [phrase["text"] for phrase in analysis["phrases"]][-2:] == [relation["text"]
                                                                     for relation in graph["relations"]]
    assert main(["parse", "a dog on a surfboard", "--parser", "scene-graph"]) == 0
    table = capsys.readouterr().out
    assert "entity: a surfboard  (a)" in table and "relation: a dog -[on]-> a surfboard" in table
    assert main(["parse", "a dog on a surfboard", "--json"]) == 0
    assert "graph" not in json.loads(capsys.readouterr().out)  # the tree parsers have none


def test_a_missing_scenegraphparser_is_one_line_naming_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sng_parser", None)
    monkeypatch.setattr(SceneGraphParser, "_loaded", {})
    assert main(["parse", "a red car", "--parser", "scene-graph"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sd-struct-rt[scene-graph]'" in lines[0], lines


def test_a_missing_spacy_pipeline_is_one_line(capsys, tmp_path):
    assert main(["generate", "a red car", "--parser", "scene-graph", "--spacy-model", "xx_no_such_model",
                 "--out", str(tmp_path / "x.png"), *FAST]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "spaCy pipeline 'xx_no_such_model' is not installed" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prompt, outcome", [
    ("", "error: the prompt is empty"),
    ("!!! ??? ,,,", "warning: mode 'values': the prompt has no phrase, so it is generated as plain"),
    ("run fast and jump high", "warning: mode 'values': the prompt has no phrase, so it is generated as plain"),
    (LONG_PROMPT, "phrases are left out (some start after the tokens the text encoder reads; only 7"),
])
def test_bad_prompts_are_one_line(capsys, tmp_path, prompt, outcome):
    code = main(["generate", prompt, "--parser", "scene-graph", "--out", str(tmp_path / "x.png"), *FAST])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and outcome in lines[0], lines
    assert code == (2 if "error" in outcome else 0)
    assert (tmp_path / "x.png").is_file() == (code == 0)


def test_the_api_and_every_command_take_the_parser(tmp_path, capsys, monkeypatch, tiny_pipe):
    output = tiny_pipe("a surfboard, a dog on the beach", parser="scene-graph", num_inference_steps=1,
                       width=64, height=64)
    assert output.metadata[0]["parser"] == "scene-graph"
    assert [level["text"] for level in json.loads(output.metadata[0]["phrases"])] == [
        "a surfboard", "a dog", "the beach", "a dog on the beach"]
    assert main(["compare", "a dog on a surfboard", "--parser", "scene-graph", "--modes", "plain,values",
                 "--seeds", "1", "--out", str(tmp_path / "c.png"), *FAST[:6], "--quiet"]) == 0
    assert read_png_metadata(tmp_path / "c.png")["parser"] == "scene-graph"
    parsed = []
    monkeypatch.setattr(SceneGraphParser, "phrases", lambda self, prompt: parsed.append(prompt) or [])
    assert main(["eval", "--model", "tiny", "--prompts-file", str(_prompts(tmp_path)), "--parser", "scene-graph",
                 "--seeds", "1", "--modes", "plain,values", "--steps", "1", "--out", str(tmp_path / "e.json"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["parser"] == "scene-graph"
    assert parsed == ["a dog on a surfboard"]  # the values run's one prompt went through it
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # one prompt's tree is no parser for a prompt set
        main(["eval", "--model", "tiny", "--prompts-file", str(_prompts(tmp_path)), "--parser", "tree",
              "--out", str(tmp_path / "t.json")])
    assert exit_info.value.code == 2 and "invalid choice: 'tree'" in capsys.readouterr().err


def _prompts(folder: Path) -> Path:
    path = folder / "prompts.txt"
    path.write_text("a dog on a surfboard\n")
    return path
