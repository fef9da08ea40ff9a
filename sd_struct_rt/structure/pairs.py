"""Attribute-object pairs (SPEC 2.8) from the parse that gives the levels.

Binding methods (``sd_struct_rt.binding``) act on an object's tokens and its attributes'. A
pair comes from the same parse as the prompt's levels: spaCy's dependencies for the ``spacy``
and ``scene-graph`` parsers, the preterminal tags of a constituency tree for ``stanza`` and
user trees. Both read an attribute as a modifier before its noun: an adjective, or a noun used
as one ("cyan" and "fire" in "a cyan fire truck"); not a determiner, a number or a possessive.
"""

from __future__ import annotations

from typing import Iterable

from .spans import AttributePair, Phrase
from .tree import TreeLike

# dependency relations of a modifier that binds to its noun; conjoined adjectives join them
ATTRIBUTE_DEPENDENCIES = {"amod", "compound"}
NOUN_POS = {"NOUN", "PROPN"}
ADJECTIVE_TAGS = {"JJ", "JJR", "JJS"}


def dependency_pairs(nouns: Iterable) -> list[AttributePair]:
    """One pair per spaCy noun token (in order) that has an attribute before it."""
    pairs = []
    for noun in nouns:
        if noun.pos_ not in NOUN_POS:
            continue
        attributes = []
        for child in noun.lefts:
            if child.dep_ in ATTRIBUTE_DEPENDENCIES:
                attributes += [child, *(c for c in child.conjuncts if c.i < noun.i)]
        if attributes:
            pairs.append(AttributePair(Phrase(noun.idx, noun.idx + len(noun.text)),
                                       tuple(Phrase(a.idx, a.idx + len(a.text))
                                             for a in sorted(set(attributes), key=lambda token: token.i))))
    return pairs


def tree_pair_leaves(tree: TreeLike) -> list[tuple[int, tuple[int, ...]]]:
    """(object leaf, attribute leaves) of every base NP (all children preterminals) whose last noun
    has adjectives or nouns before it, in pre-order. Leaves are counted from 0."""
    found, leaves, stack = [], 0, [tree]
    while stack:
        node = stack.pop()
        if not node.children:
            leaves += 1
            continue
        preterminal = [len(child.children) == 1 and not child.children[0].children for child in node.children]
        if node.label == "NP" and all(preterminal):
            tags = [child.label for child in node.children]
            nouns = [i for i, tag in enumerate(tags) if tag.startswith("NN")]
            if nouns:
                attributes = tuple(leaves + i for i in range(nouns[-1])
                                   if tags[i] in ADJECTIVE_TAGS or tags[i].startswith("NN"))
                if attributes:
                    found.append((leaves + nouns[-1], attributes))
        stack.extend(reversed(node.children))
    return found
