"""SPEC section 3: aligned and merged sequences, the unconditional row, stacking and masks."""

from __future__ import annotations

import warnings

import pytest
import torch

from sd_struct_rt.conditioning import build_conditioning
from sd_struct_rt.families.sd1 import TextEmbeddings
from sd_struct_rt.structure.spans import PhraseSpan, StructuredPrompt, StructureWarning, capped
from sd_struct_rt.text import token_ids

PROMPT = StructuredPrompt("a red car and a white sheep",
                          (PhraseSpan("a red car", 0, 3), PhraseSpan("a white sheep", 4, 7)))


class CountingEncoder:
    """Texts in, embeddings out, as the family's encode_texts gives them; counts its calls."""

    def __init__(self, model):
        self.inner, self.tokenizer, self.calls = TextEmbeddings(model.text_encoder), model.tokenizer, 0

    @torch.no_grad()
    def __call__(self, texts):
        self.calls += 1
        return self.inner(token_ids(self.tokenizer, texts)), None


@pytest.fixture
def encode(tiny):
    def run(texts):
        with torch.no_grad():
            return TextEmbeddings(tiny.text_encoder)(token_ids(tiny.tokenizer, texts))
    return run


def test_values_mode_levels(tiny, encode):
    encoder = CountingEncoder(tiny)
    result = build_conditioning(encoder, [PROMPT], ["blurry"], "values")
    assert encoder.calls == 1  # every string of the batch in one text-encoder call
    u, e0, red_car, white_sheep = encode(["blurry", PROMPT.prompt, "a red car", "a white sheep"])
    # rows: unconditional first, then conditional
    assert torch.equal(result.encoder_hidden_states[0], u)
    assert torch.equal(result.encoder_hidden_states[1], e0)
    assert result.level_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert torch.equal(result.level_states[0, 0], u)
    assert torch.equal(result.level_states[1, 0], e0)
    second = result.level_states[1, 2]
    # positions s+1..e come from the phrase's own encoding, positions 1..e-s
    assert torch.equal(second[5:8], white_sheep[1:4])
    # BOS, everything outside the span, EOS and padding stay those of e0
    assert torch.equal(second[:5], e0[:5]) and torch.equal(second[8:], e0[8:])
    assert not torch.allclose(second[5:8], e0[5:8])  # the phrase alone reads differently


def test_a_phrase_at_the_first_word_is_still_a_level(tiny, encode):
    # CLIP is causal: "a red car" encoded alone equals the prompt's first positions.
    result = build_conditioning(CountingEncoder(tiny), [PROMPT], [""], "values")
    e0 = result.level_states[1, 0]
    assert torch.allclose(result.level_states[1, 1], e0, atol=1e-5)
    assert result.levels_per_row == [1, 3]


def test_keys_mode_merges_phrases_in_order(tiny, encode):
    nested = StructuredPrompt("a red car and a white sheep", (
        PhraseSpan("a red car and a white sheep"[0:9], 0, 3),
        PhraseSpan("red car", 1, 3)))  # inner phrase written last
    result = build_conditioning(CountingEncoder(tiny), [nested], [""], "keys")
    e0, outer, inner = encode([nested.prompt, "a red car", "red car"])
    merged = result.encoder_hidden_states[1]
    assert torch.equal(merged[1:2], outer[1:2])
    assert torch.equal(merged[2:4], inner[1:3])  # inner overwrote outer
    assert torch.equal(merged[4:], e0[4:])
    # keys are the full prompt and the aligned sequences
    assert torch.equal(result.level_states[1, 0], e0)
    assert result.level_mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_plain_mode_is_one_level(tiny):
    result = build_conditioning(CountingEncoder(tiny), [PROMPT], [""], "plain")
    assert result.level_states.shape[1] == 1
    assert torch.equal(result.level_states[:, 0], result.encoder_hidden_states)


def test_batch_rows_with_different_level_counts_are_padded(tiny):
    single = StructuredPrompt("cats", ())
    result = build_conditioning(CountingEncoder(tiny), [PROMPT, single], ["", ""], "values")
    assert result.level_mask.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    assert result.level_states[3, 1:].abs().sum() == 0


def test_levels_are_capped_with_one_warning_and_recorded(tiny):
    many = StructuredPrompt("a b c d e f", tuple(PhraseSpan(f"phrase {i}", 0, 2) for i in range(5)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = capped(many, max_levels=3)
    assert [span.text for span in kept.spans] == ["phrase 0", "phrase 1"]
    assert kept.dropped == ("phrase 2", "phrase 3", "phrase 4")
    assert [issubclass(w.category, StructureWarning) for w in caught] == [True]  # one line for all three
    result = build_conditioning(CountingEncoder(tiny), [kept], [""], "values")
    assert result.level_states.shape[1] == 3
