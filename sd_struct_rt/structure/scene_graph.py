"""The scene-graph parser (SPEC 2.7): levels from SceneGraphParser's entities and relations.

SceneGraphParser (``sng_parser``, its spaCy backend) turns a caption into entities (spaCy's
noun chunks, with their modifiers) and relations between them. The paper's official code
makes one level per entity of two or more words and one per relation, reaching from the
earlier of subject and object to the later one's end. It then used spaCy's word indices as
CLIP token positions and joined whitespace-split words for the relation texts, which breaks
on any word of several BPE tokens and on punctuation; we take every level's characters from
spaCy's own offsets instead, and the structure stage turns characters into tokens (SPEC 2.4).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import UserError
from .memo import LastParse
from .pairs import dependency_pairs
from .spans import AttributePair, Phrase

EXTRA = "pip install 'sd-struct-rt[scene-graph]'"


@dataclass(frozen=True)
class Entity:
    """One node: a noun chunk of the prompt, as characters, with what modifies it."""

    phrase: Phrase
    words: tuple[int, int]  # the chunk's spaCy tokens, [start, end); the official code used them as positions
    head: str  # the noun with its compounds ("fire truck")
    modifiers: tuple[tuple[str, str], ...]  # (dependency, word): det, nummod and amod

    def as_json(self, prompt: str) -> dict:
        return {"text": prompt[self.phrase.start_char:self.phrase.end_char], "head": self.head,
                "modifiers": [{"dep": dep, "text": text} for dep, text in self.modifiers],
                "characters": [self.phrase.start_char, self.phrase.end_char]}


@dataclass(frozen=True)
class Relation:
    """One edge: ``subject`` and ``object`` index ``SceneGraph.entities``."""

    subject: int
    object: int
    words: str  # the relation as written ("next to", "playing")


@dataclass(frozen=True)
class SceneGraph:
    prompt: str
    entities: tuple[Entity, ...]
    relations: tuple[Relation, ...]
    pairs: tuple[AttributePair, ...] = ()  # each entity's head noun and its attributes (SPEC 2.8)

    def relation_phrase(self, relation: Relation) -> Phrase:
        """From the earlier of subject and object to the later one's end."""
        ends = (self.entities[relation.subject].phrase, self.entities[relation.object].phrase)
        return Phrase(min(end.start_char for end in ends), max(end.end_char for end in ends))

    def levels(self) -> list[Phrase]:
        """The official order: entities of two or more words, then relations; each range once.

        Whole-prompt ranges are left to the structure stage, which drops them for every parser.
        """
        candidates = [entity.phrase for entity in self.entities if entity.words[1] - entity.words[0] >= 2]
        candidates += [self.relation_phrase(relation) for relation in self.relations]
        return list(dict.fromkeys(candidates))

    def official_levels(self) -> list[tuple[str, tuple[int, int]]]:
        """What the official function made of this graph: (text, span) pairs whose spans are spaCy
        word indices taken as CLIP token positions, relation texts joined from whitespace words,
        nothing deduplicated. Kept only to measure where that goes wrong (tests, benchmarks)."""
        words, levels = self.prompt.split(), []
        for entity in self.entities:
            text = self.prompt[entity.phrase.start_char:entity.phrase.end_char]
            if text != self.prompt and entity.words[1] - entity.words[0] > 1:
                levels.append((text, entity.words))
        for relation in self.relations:
            ends = (self.entities[relation.subject].words, self.entities[relation.object].words)
            span = (min(start for start, _ in ends), max(end for _, end in ends))
            text = " ".join(words[span[0]:span[1]])
            if text != self.prompt:
                levels.append((text, span))
        return levels

    def as_json(self) -> dict:
        return {"entities": [entity.as_json(self.prompt) for entity in self.entities],
                "relations": [{"subject": relation.subject, "object": relation.object, "relation": relation.words,
                               "text": self.prompt[(phrase := self.relation_phrase(relation)).start_char:
                                                   phrase.end_char]}
                              for relation in self.relations]}


class SceneGraphParser:
    """SceneGraphParser's spaCy backend on the spaCy pipeline the ``spacy`` parser uses (its own copy:
    it keeps the lemmatizer, which SceneGraphParser reads for phrasal verbs)."""

    name = "scene-graph"
    _loaded: dict[str, object] = {}
    _loading = threading.Lock()  # a server's threads share one copy of the pipeline

    def __init__(self, model: str):
        self.model = model
        self.graph = LastParse(self._parsed_graph)  # `sdrt parse` asks for levels, then the graph

    def _load(self):
        with self._loading:
            if self.model not in self._loaded:
                self._loaded[self.model] = self._loaded_parser()
        return self._loaded[self.model]

    def _loaded_parser(self):
        try:
            import sng_parser
        except ImportError:
            raise UserError(f"SceneGraphParser is not installed; run: {EXTRA}") from None
        try:
            parser = sng_parser.Parser("spacy", model=self.model)
        except ImportError as error:  # the backend wraps a missing spaCy or pipeline in ImportError
            if isinstance(error.__cause__, OSError):
                raise UserError(f"spaCy pipeline {self.model!r} is not installed for the scene-graph parser; run: "
                                f"{EXTRA}, or name an installed spaCy pipeline") from None
            raise UserError(f"spaCy is not installed for the scene-graph parser; run: {EXTRA}") from None
        if "ner" in parser.unwrapped.nlp.pipe_names:
            parser.unwrapped.nlp.disable_pipe("ner")  # entities come from noun chunks, not named entities
        return parser

    def _parsed_graph(self, prompt: str) -> SceneGraph:
        """The scene graph of the preprocessed ``prompt``, every entity as characters of it."""
        graph, document = self._load().parse(prompt, return_doc=True)
        entities, heads = [], []
        for entity in graph["entities"]:
            start, end = entity["span_bounds"]
            chunk = document[start:end]
            heads.append(chunk.root)
            entities.append(Entity(Phrase(chunk.start_char, chunk.end_char), (start, end), entity["head"],
                                   tuple((modifier["dep"], modifier["span"]) for modifier in entity["modifiers"])))
        relations = tuple(Relation(relation["subject"], relation["object"], relation["relation"])
                          for relation in graph["relations"])
        return SceneGraph(prompt, tuple(entities), relations, tuple(dependency_pairs(heads)))

    def phrases(self, prompt: str) -> list[Phrase]:
        return self.graph(prompt).levels()

    def attribute_pairs(self, prompt: str) -> list[AttributePair]:
        return list(self.graph(prompt).pairs)
