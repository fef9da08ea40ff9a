"""Constituency trees: the one shape every parser hands to the phrase walker.

The walker only reads ``label`` and ``children``, so Stanza's own ``Tree`` objects and
ours are interchangeable; a leaf is a node without children whose label is the word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..errors import InputError


class TreeLike(Protocol):
    label: str

    @property
    def children(self) -> Sequence["TreeLike"]: ...


@dataclass(frozen=True)
class Tree:
    label: str
    children: tuple["Tree", ...] = ()

    def __str__(self) -> str:
        if not self.children:
            return self.label
        return "(" + " ".join([self.label, *map(str, self.children)]) + ")"


# Penn Treebank escapes brackets in leaves; the prompt has the real characters.
_PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
                "``": '"', "''": '"'}


def leaf_words(tree: TreeLike) -> list[str]:
    """The tree's words, left to right, with Penn escapes undone."""
    if not tree.children:
        return [_PTB_ESCAPES.get(tree.label, tree.label)]
    return [word for child in tree.children for word in leaf_words(child)]


def noun_phrase_leaf_ranges(tree: TreeLike) -> list[tuple[int, int]]:
    """Half-open leaf-index ranges of every ``NP`` with two or more leaves, in pre-order."""
    ranges: list[tuple[int, int]] = []

    def visit(node: TreeLike, first_leaf: int) -> int:
        if not node.children:
            return first_leaf + 1
        slot = len(ranges)
        if node.label == "NP":
            ranges.append((first_leaf, first_leaf))  # end filled in once the children are walked
        end = first_leaf
        for child in node.children:
            end = visit(child, end)
        if node.label == "NP":
            if end - first_leaf >= 2:
                ranges[slot] = (first_leaf, end)
            else:
                del ranges[slot]
        return end

    visit(tree, 0)
    return ranges


def read_bracketed(text: str) -> Tree:
    """Parse one Penn-style bracketed tree such as ``(ROOT (NP (DT a) (NN cat)))``."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    if not tokens:
        raise InputError("empty tree: give a bracketed tree such as '(ROOT (NP (DT a) (NN cat)))'")
    position = 0

    def parse() -> Tree:
        nonlocal position
        if tokens[position] != "(":
            word = tokens[position]
            position += 1
            return Tree(word)
        position += 1
        if position >= len(tokens) or tokens[position] in "()":
            raise InputError(f"malformed tree {text!r}: every '(' must be followed by a label")
        label = tokens[position]
        position += 1
        children = []
        while position < len(tokens) and tokens[position] != ")":
            children.append(parse())
        if position >= len(tokens):
            raise InputError(f"unbalanced tree {text!r}: a ')' is missing")
        position += 1
        if not children:
            raise InputError(f"malformed tree {text!r}: node {label!r} has no word below it")
        return Tree(label, tuple(children))

    if tokens[0] != "(":
        raise InputError(f"malformed tree {text!r}: a tree starts with '('")
    tree = parse()
    if position != len(tokens):
        raise InputError(f"unbalanced tree {text!r}: text after the tree's last ')'")
    return tree
