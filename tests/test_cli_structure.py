import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_struct_rt.cli import main
from sd_struct_rt.image import read_png_metadata

FAST = ["--steps", "2", "--width", "64", "--height", "64", "--quiet", "--seed", "5"]


def pixels(path):
    with Image.open(path) as picture:
        return np.asarray(picture)


def test_no_phrase_gives_the_plain_image(tmp_path):
    assert main(["generate", "cats", "--mode", "values", "--out", str(tmp_path / "v.png"), *FAST]) == 0
    assert main(["generate", "cats", "--mode", "plain", "--out", str(tmp_path / "p.png"), *FAST]) == 0
    assert json.loads(read_png_metadata(tmp_path / "v.png")["phrases"]) == []
    assert np.array_equal(pixels(tmp_path / "v.png"), pixels(tmp_path / "p.png"))


def test_structure_changes_the_image_and_is_recorded(tmp_path):
    prompt = "a red car and a white sheep"
    for mode in ("values", "keys", "plain"):
        assert main(["generate", prompt, "--mode", mode, "--out", str(tmp_path / f"{mode}.png"), *FAST]) == 0
    meta = read_png_metadata(tmp_path / "values.png")
    assert meta["mode"] == "values" and meta["parser"] == "spacy"
    assert json.loads(meta["phrases"]) == [{"text": "a red car", "span": [0, 3]},
                                           {"text": "a white sheep", "span": [4, 7]}]
    assert read_png_metadata(tmp_path / "plain.png")["parser"] == "none"
    images = {mode: pixels(tmp_path / f"{mode}.png") for mode in ("values", "keys", "plain")}
    assert not np.array_equal(images["values"], images["plain"])
    assert not np.array_equal(images["keys"], images["values"])


def test_parse_json(capsys):
    assert main(["parse", "A red car and a white sheep.", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"prompt": "a red car and a white sheep",
                      "tokens": ["a</w>", "red</w>", "car</w>", "and</w>", "a</w>", "white</w>", "sheep</w>"],
                      "phrases": [{"text": "a red car", "span": [0, 3]}, {"text": "a white sheep", "span": [4, 7]}],
                      "dropped": [],
                      "pairs": [{"object": {"text": "car", "span": [2, 3]}, "attributes": [{"text": "red",
                                                                                           "span": [1, 2]}]},
                                {"object": {"text": "sheep", "span": [6, 7]},
                                 "attributes": [{"text": "white", "span": [5, 6]}]}]}


def test_parse_table_with_tree(capsys):
    tree = "(ROOT (NP (NP (DT a) (NN cat)) (PP (IN on) (NP (DT a) (NN mat)))))"
    assert main(["parse", "a cat on a mat", "--tree", tree]) == 0
    out = capsys.readouterr().out
    assert "level 1: [ 0,  2)  a cat" in out and "level 2: [ 3,  5)  a mat" in out


@pytest.mark.parametrize("arguments, expected", [
    (["--tree", "(ROOT (NP (DT a) (NN cat)"], "unbalanced tree"),
    (["--tree", ""], "empty tree"),
    (["--tree", "(ROOT (NP (DT a) (NN dog)))"], "does not match the prompt"),
    (["--phrase", "a dog"], "does not occur as whole words in the prompt"),
    (["--parser", "nltk"], "invalid choice"),
    (["--parser", "spacy", "--spacy-model", "xx_no_such_model"], "is not installed"),
    (["--parser", "spacy", "--phrase", "a cat"], "go with --parser tree"),
])
@pytest.mark.parametrize("command", ["generate", "parse"])
def test_bad_structure_input_is_one_line(tmp_path, capsys, arguments, expected, command):
    extra = ["--out", str(tmp_path / "x.png"), *FAST] if command == "generate" else []
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([command, "a cat", *arguments, *extra]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_missing_stanza_models_is_one_line(tmp_path, capsys, monkeypatch):
    from sd_struct_rt.structure.parsers import StanzaParser

    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(tmp_path / "no-stanza-models"))
    monkeypatch.setattr(StanzaParser, "_pipeline", None)
    assert main(["parse", "a red car", "--parser", "stanza"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "stanza.download" in lines[0]


def test_partial_word_phrase_and_empty_prompt_are_refused(capsys):
    assert main(["parse", "a red car and a white sheep", "--phrase", "red ca"]) == 2
    assert "whole words" in capsys.readouterr().err
    assert main(["parse", " . "]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_parse_a_prompts_file_prints_one_json_line_per_prompt(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car and a white sheep\ncats\na cat on a mat\n")
    assert main(["parse", "--prompts-file", str(prompts), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == ["a red car and a white sheep", "cats", "a cat on a mat"]
    assert json.loads(lines[0])["phrases"][1] == {"text": "a white sheep", "span": [4, 7]}
    assert json.loads(lines[1])["phrases"] == []


def test_parse_needs_exactly_one_source(tmp_path, capsys):
    assert main(["parse"]) == 2
    assert "give either a prompt or --prompts-file" in capsys.readouterr().err


CC500 = Path(__file__).resolve().parents[2] / "shared" / "CC-500.txt"


@pytest.mark.skipif(not CC500.is_file(), reason="needs shared/CC-500.txt beside the repository")
def test_cc500_parses_in_one_process(tmp_path, capsys):
    first = tmp_path / "cc500.txt"
    first.write_text("\n".join(CC500.read_text().splitlines()[:446]) + "\n")
    assert main(["parse", "--prompts-file", str(first), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(results) == 446
    assert sum(len(result["phrases"]) == 2 for result in results) >= 444
