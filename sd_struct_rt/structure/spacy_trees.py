"""Constituency-style trees from a spaCy dependency parse, shaped like Stanford's NPs.

Structured Diffusion Guidance reads noun phrases off a Stanford/Stanza constituency
parse.  spaCy's ``noun_chunks`` are flat (no "a cat on the table" around "a cat" and
"the table", no NP around a coordination), so we rebuild the nesting from the
dependency tree instead:

* a noun's determiners, adjectives, compounds and numbers form its base NP;
* post-modifiers (PP, relative clause, participle) wrap the base NP in a larger NP;
* conjuncts are siblings inside one NP that covers the whole coordination;
* verbs become VP, with their subjects lifted beside them into an S.

Every token becomes exactly one leaf, in sentence order, so callers can align leaves to
the characters of the prompt.  Labels other than ``NP`` are only there for reading.
"""

from __future__ import annotations

from .tree import Tree

# Dependents that stay inside the base NP ("a red fire truck"), as Stanford puts them.
_NP_INTERNAL_DEPS = {"det", "predet", "amod", "compound", "nummod", "nmod", "poss", "case", "quantmod"}
# Relations whose dependent fills a noun slot even when the tagger calls it something else
# ("on the left", where "left" is tagged JJ).
_ARGUMENT_DEPS = {"nsubj", "nsubjpass", "dobj", "iobj", "pobj", "attr", "appos", "dative", "npadvmod"}
_SUBJECT_DEPS = {"nsubj", "nsubjpass", "csubj", "csubjpass", "expl"}
_COORDINATION_DEPS = {"cc", "conj", "preconj"}
_NOMINAL_POS = {"NOUN", "PROPN", "PRON"}
_VERBAL_POS = {"VERB", "AUX"}
_PHRASE_LABEL_BY_POS = {"ADP": "PP", "VERB": "VP", "AUX": "VP", "ADJ": "ADJP", "ADV": "ADVP",
                        "NUM": "QP", "SCONJ": "SBAR"}


def sentence_tree(sentence) -> Tree:
    """Tree over one spaCy sentence (a ``Span``); its leaves are the tokens' texts, in order."""
    return _TreeBuilder(sentence).build()


def _is_nominal(token) -> bool:
    if token.pos_ in _NOMINAL_POS:
        return True
    if token.pos_ in _VERBAL_POS:
        return False
    return token.dep_ in _ARGUMENT_DEPS or (token.dep_ == "conj" and _is_nominal(token.head))


def _is_detachable(token) -> bool:
    return token.dep_ in {"cc", "punct"} and token.n_lefts + token.n_rights == 0


class _TreeBuilder:
    def __init__(self, sentence) -> None:
        self.sentence = sentence
        self.root = sentence.root
        # spaCy often hangs an "and" or "," on the word beside it ("a black shirt and | white
        # tie"), which would put it at the edge of that word's NP; Stanford never does.  Move each
        # such token up to the lowest ancestor in which it is no longer at the edge.
        self.children = {token.i: [] for token in sentence}
        for token in sentence:
            if token.head.i != token.i:  # a second root leaves the tree short; build() then goes flat
                self.children.setdefault(self._adoptive_head(token).i, []).append(token)

    def _adoptive_head(self, token):
        head = token.head
        if not _is_detachable(token):
            return head
        while head.i != self.root.i and head.head.i != head.i and self._on_subtree_border(head, token):
            head = head.head
        return head

    def _on_subtree_border(self, head, token) -> bool:
        """True when only "and"s and commas lie between the token and an edge of the head's subtree."""
        doc = self.sentence.doc
        after, before = doc[token.i:head.right_edge.i + 1], doc[head.left_edge.i:token.i + 1]
        return any(len(side) > 0 and all(map(_is_detachable, side)) for side in (after, before))

    def _subtree_indices(self, token) -> list[int]:
        return [token.i] + [i for child in self.children[token.i] for i in self._subtree_indices(child)]

    def _is_contiguous(self, token) -> bool:
        """True when the subtree covers an unbroken run of tokens (no crossing arcs)."""
        indices = self._subtree_indices(token)
        return max(indices) - min(indices) + 1 == len(indices)

    def build(self) -> Tree:
        if len(self._subtree_indices(self.root)) == len(self.sentence) and self._is_contiguous(self.root):
            return self._phrase(self.root)
        # A sentence split that disagrees with the parse: keep the words, give up the structure.
        return Tree("FRAG", tuple(Tree(token.text) for token in self.sentence))

    def _phrase(self, token) -> Tree:
        """The constituent of a token whose subtree is contiguous."""
        children = self.children[token.i]
        head = Tree(token.text)
        if not children and not (_is_nominal(token) and token.dep_ in _ARGUMENT_DEPS | {"conj"}):
            return head  # a lone determiner, adjective or compound needs no node of its own
        if not all(self._is_contiguous(child) for child in children):
            return self._flat_fallback(token)
        left = [child for child in children if child.i < token.i]
        right = [child for child in children if child.i > token.i]
        if _is_nominal(token):
            return self._noun_phrase(left, head, right)
        if token.pos_ in _VERBAL_POS:
            return self._clause(left, head, right)
        label = _PHRASE_LABEL_BY_POS.get(token.pos_, token.tag_ or "X")
        return Tree(label, (*map(self._phrase, left), head, *map(self._phrase, right)))

    def _noun_phrase(self, left: list, head: Tree, right: list) -> Tree:
        """(NP (NP base post-modifiers) cc (NP conjunct) ...), dropping layers that would be empty."""
        base_end = 0
        while base_end < len(right) and right[base_end].dep_ in _NP_INTERNAL_DEPS:
            base_end += 1
        # A comma opens the coordination only when a conjunct follows it ("a car, a bus and a dog").
        coordination_start = next((i for i in range(base_end, len(right)) if right[i].dep_ in _COORDINATION_DEPS
                                   or (right[i].dep_ == "punct" and any(c.dep_ == "conj" for c in right[i:]))),
                                  len(right))
        base = Tree("NP", tuple(self._base_np_parts(left, head, right[:base_end])))
        post_modifiers, coordination = right[base_end:coordination_start], right[coordination_start:]
        modified = self._wrap_np(base, post_modifiers, list(map(self._phrase, post_modifiers)))
        return self._wrap_np(modified, coordination, list(self._coordination_parts(coordination)))

    def _coordination_parts(self, coordination: list):
        for child in coordination:
            phrase = self._phrase(child)
            # spaCy chains "A and B and C" as A -> B -> C; Stanford lists the conjuncts side by side.
            if child.dep_ == "conj" and phrase.label == "NP" and any(
                    grandchild.dep_ == "conj" for grandchild in self.children[child.i]):
                yield from phrase.children
            else:
                yield phrase

    def _base_np_parts(self, left: list, head: Tree, right: list):
        for child in left:
            phrase = self._phrase(child)
            # "a blue cell phone": spaCy hangs "blue" on "cell"; Stanford keeps the NP flat.
            if child.dep_ == "compound" and phrase.label == "NP":
                yield from phrase.children
            else:
                yield phrase
        yield head
        yield from map(self._phrase, right)

    @staticmethod
    def _wrap_np(inner: Tree, following: list, following_phrases: list[Tree]) -> Tree:
        """NP over ``inner`` and the phrases after it; punctuation alone does not earn a new NP."""
        if all(child.dep_ == "punct" for child in following):
            return Tree(inner.label, (*inner.children, *following_phrases))
        return Tree("NP", (inner, *following_phrases))

    def _clause(self, left: list, head: Tree, right: list) -> Tree:
        """(S subject (VP auxiliaries verb objects) .) -- Stanford keeps the subject outside the VP."""
        subject_end = max((i + 1 for i, child in enumerate(left) if child.dep_ in _SUBJECT_DEPS), default=0)
        trailing_punct = len(right)
        while trailing_punct > 0 and right[trailing_punct - 1].dep_ == "punct":
            trailing_punct -= 1
        verb_phrase = Tree("VP", (*map(self._phrase, left[subject_end:]), head,
                                  *map(self._phrase, right[:trailing_punct])))
        if subject_end == 0 and trailing_punct == len(right):
            return verb_phrase
        return Tree("S", (*map(self._phrase, left[:subject_end]), verb_phrase,
                          *map(self._phrase, right[trailing_punct:])))

    def _flat_fallback(self, token) -> Tree:
        """A token with a crossing (non-projective) dependent: keep each contiguous piece, drop the nesting."""
        pieces: list[tuple[int, Tree]] = []

        def collect(node) -> None:
            pieces.append((node.i, Tree(node.text)))
            for child in self.children[node.i]:
                if self._is_contiguous(child):
                    pieces.append((min(self._subtree_indices(child)), self._phrase(child)))
                else:
                    collect(child)

        collect(token)
        return Tree("X", tuple(piece for _, piece in sorted(pieces, key=lambda item: item[0])))
