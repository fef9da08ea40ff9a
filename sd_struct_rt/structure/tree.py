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


@dataclass(frozen=True, eq=False)
class Tree:
    """A node: ``label`` and ``children`` (a leaf has none, and its label is the word).

    Every walk below is iterative: a user's bracketed tree may be nested far deeper than
    Python's recursion limit.
    """

    label: str
    children: tuple["Tree", ...] = ()

    def __str__(self) -> str:
        parts: list[str] = []
        stack: list[TreeLike | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                parts.append(node)
            elif not node.children:
                parts.append(" " + node.label)
            else:
                parts.append(" (" + node.label)
                stack.append(")")
                stack.extend(reversed(node.children))
        return "".join(parts).lstrip()


# Penn Treebank escapes brackets in leaves; the prompt has the real characters.
_PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
                "``": '"', "''": '"'}


def leaf_words(tree: TreeLike) -> list[str]:
    """The tree's words, left to right, with Penn escapes undone."""
    words, stack = [], [tree]
    while stack:
        node = stack.pop()
        if not node.children:
            words.append(_PTB_ESCAPES.get(node.label, node.label))
        else:
            stack.extend(reversed(node.children))
    return words


def noun_phrase_leaf_ranges(tree: TreeLike) -> list[tuple[int, int]]:
    """Half-open leaf-index ranges of every ``NP`` with two or more leaves, in pre-order."""
    ranges: list[tuple[int, int] | None] = []
    leaves = 0
    # (node, None) visits a node; (None, slot) closes the NP whose range sits at ranges[slot].
    stack: list[tuple[TreeLike | None, int | None]] = [(tree, None)]
    starts: dict[int, int] = {}
    while stack:
        node, closing = stack.pop()
        if node is None:
            start = starts.pop(closing)
            ranges[closing] = (start, leaves) if leaves - start >= 2 else None
            continue
        if not node.children:
            leaves += 1
            continue
        if node.label == "NP":
            starts[len(ranges)] = leaves
            stack.append((None, len(ranges)))
            ranges.append(None)  # filled in once the children are walked
        stack.extend((child, None) for child in reversed(node.children))
    return [found for found in ranges if found is not None]


def _refused(message: str) -> InputError:
    """A tree the user wrote (the ``trees`` parameter) that cannot be read."""
    return InputError(message, parameter="trees", leads=False)


def read_bracketed(text: str) -> Tree:
    """Parse one Penn-style bracketed tree such as ``(ROOT (NP (DT a) (NN cat)))``."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    if not tokens:
        raise _refused("empty tree: give a bracketed tree such as '(ROOT (NP (DT a) (NN cat)))'")
    if tokens[0] != "(":
        raise _refused(f"malformed tree {_short(text)}: a tree starts with '('")
    open_nodes: list[tuple[str, list[Tree]]] = []  # label and children of every '(' not yet closed
    root = None
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if root is not None:
            raise _refused(f"unbalanced tree {_short(text)}: text after the tree's last ')'")
        if token == "(":
            label = tokens[position + 1] if position + 1 < len(tokens) else ")"
            if label in "()":
                raise _refused(f"malformed tree {_short(text)}: every '(' must be followed by a label")
            open_nodes.append((label, []))
            position += 2
            continue
        if token == ")":
            if not open_nodes:
                raise _refused(f"unbalanced tree {_short(text)}: a ')' has no '('")
            label, children = open_nodes.pop()
            if not children:
                raise _refused(f"malformed tree {_short(text)}: node {label!r} has no word below it")
            node = Tree(label, tuple(children))
            if open_nodes:
                open_nodes[-1][1].append(node)
            else:
                root = node
        else:
            open_nodes[-1][1].append(Tree(token))
        position += 1
    if root is None:
        raise _refused(f"unbalanced tree {_short(text)}: a ')' is missing")
    return root


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
