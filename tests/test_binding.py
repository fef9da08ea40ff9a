"""Text-side binding methods (SPEC 2.8 pairs, 3.7 methods): equations, every mode, no extra rows, engines."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch

from sd_struct_rt import StructuredDiffusionPipeline
from sd_struct_rt.cli import main
from sd_struct_rt.conditioning import aligned
from sd_struct_rt.errors import InputError
from sd_struct_rt.image import read_png_metadata
from sd_struct_rt.structure import analyse
from sd_struct_rt.structure.parsers import make_parser

from tests.conftest import psnr

PROMPT = "a red circle and a blue square"
SMALL = dict(num_inference_steps=2, width=64, height=64, seed=3)


@pytest.fixture(scope="module")
def pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


def pairs_of(prompt, parser, tokenizer):
    return [(pair.object.text, pair.object.start, pair.object.end,
             [(part.text, part.start, part.end) for part in pair.attributes])
            for pair in analyse(prompt, parser, tokenizer, pairs=True).pairs]


@pytest.mark.parametrize("parser", ["spacy", "scene-graph"])
def test_pairs_come_from_the_dependency_parse(tiny, parser):
    assert pairs_of("a red and white car next to a cyan fire truck", make_parser(parser), tiny.tokenizer) == [
        ("car", 4, 5, [("red", 1, 2), ("white", 3, 4)]),
        ("truck", 11, 12, [("cyan", 8, 10), ("fire", 10, 11)])]  # "cyan" is two BPE tokens


def test_pairs_come_from_a_trees_tags(tiny):
    tree = "(ROOT (NP (NP (DT a) (JJ red) (NN car)) (CC and) (NP (DT the) (NN sheep))))"
    parser = make_parser("tree", [tree])
    assert pairs_of("a red car and the sheep", parser, tiny.tokenizer) == [("car", 2, 3, [("red", 1, 2)])]
    assert pairs_of("a red car", make_parser("tree", phrase_texts=["a red car"]), tiny.tokenizer) == []


def encode(pipe, texts):
    return pipe.encode_texts(texts)[0]


def length(pipe, text):
    return len(pipe.tokenizer.tokenize(text))


def magnet_from_scratch(pipe, sequence: torch.Tensor) -> torch.Tensor:
    """SPEC 3.7.1 for PROMPT, written out: pair 1 is (red, circle) at token 2, pair 2 (blue, square) at 6."""
    def w(text):
        return encode(pipe, [text])[0][length(pipe, text)]

    out = sequence.clone()
    for attribute, obj, position, other in (("red", "circle", 3, "blue"), ("blue", "square", 7, "red")):
        concept = encode(pipe, [f"{attribute} {obj}"])[0]
        omega = float(torch.nn.functional.cosine_similarity(concept[length(pipe, f"{attribute} {obj}") + 1],
                                                            concept[-1], dim=0))
        out[position] += math.exp(0.6 - omega) * (w(f"{attribute} {obj}") - w(obj)) \
            - (1 - omega ** 2) * (w(f"{other} {obj}") - w(obj))
    return out


def tome_from_scratch(pipe, sequence: torch.Tensor) -> torch.Tensor:
    """SPEC 3.7.2 for PROMPT: red (1) into circle (2), blue (5) into square (6); tail from "a circle and a square"."""
    out = sequence.clone()
    for attribute, obj in ((2, 3), (6, 7)):
        out[obj] = 1.1 * sequence[obj] + 1.2 * sequence[attribute]
        out[attribute] = 0
    stripped = encode(pipe, ["a circle and a square"])[0]
    end = length(pipe, PROMPT) + 1
    out[end:] = stripped[end:]
    return out


FROM_SCRATCH = {"magnet": magnet_from_scratch, "tome": tome_from_scratch}


@pytest.mark.parametrize("binding", ["magnet", "tome"])
def test_each_equation_against_a_from_scratch_computation(pipe, binding):
    request = pipe.check_inputs(PROMPT, mode="values", binding=binding, negative_prompt="blurry")
    structured = pipe.structure(request)
    result = pipe.condition(structured, request)
    u, e0 = encode(pipe, ["blurry", PROMPT])
    plain = pipe.condition(structured, pipe.check_inputs(PROMPT, mode="values", negative_prompt="blurry"))
    expected = FROM_SCRATCH[binding](pipe, e0)
    assert torch.allclose(result.level_states[1, 0], expected, atol=1e-5)
    assert torch.allclose(result.encoder_hidden_states[1], expected, atol=1e-5)  # the keys too
    # every aligned level is bound the same way, from its own states
    for level, span in enumerate(structured[0].spans, start=1):
        phrase = encode(pipe, [span.text])[0]
        assert torch.allclose(result.level_states[1, level], FROM_SCRATCH[binding](pipe, aligned(e0, phrase, span)),
                              atol=1e-5)
    # the unconditional row is untouched, and the binding did change the prompt's
    assert torch.equal(result.level_states[0], plain.level_states[0]) and torch.equal(result.level_states[0, 0], u)
    assert not torch.allclose(result.level_states[1, 0], plain.level_states[1, 0])


@pytest.mark.parametrize("binding", ["magnet", "tome"])
@pytest.mark.parametrize("mode", ["plain", "values", "keys", "composable"])
def test_every_mode_takes_it_with_no_extra_unet_rows(pipe, binding, mode, monkeypatch):
    rows = []
    inner = pipe.predict_noise

    def counting(sample, *rest):
        rows.append(sample.shape[0])
        return inner(sample, *rest)

    monkeypatch.setattr(pipe, "predict_noise", counting)
    unbound = pipe(PROMPT, mode=mode, **SMALL)
    counted, rows[:] = list(rows), []
    bound = pipe(PROMPT, mode=mode, binding=binding, **SMALL)
    assert rows == counted
    assert bound.metadata[0]["binding"] == binding and unbound.metadata[0]["binding"] == "none"
    assert psnr(bound.images[0], unbound.images[0]) < 60  # it did something


def test_composable_binds_only_the_full_prompt_component(pipe):
    request = pipe.check_inputs(PROMPT, mode="composable", binding="magnet")
    structured = pipe.structure(request)
    bound, plain = pipe.condition(structured, request), pipe.condition(structured, pipe.check_inputs(
        PROMPT, mode="composable"))
    assert torch.allclose(bound.encoder_hidden_states[1], magnet_from_scratch(pipe, plain.encoder_hidden_states[1]),
                          atol=1e-5)
    assert torch.equal(bound.encoder_hidden_states[2:], plain.encoder_hidden_states[2:])  # phrases alone


def test_plain_mode_with_a_binding_has_pairs_but_no_levels(pipe):
    request = pipe.check_inputs(PROMPT, mode="plain", binding="tome")
    (structured,) = pipe.structure(request)
    assert structured.spans == () and len(structured.pairs) == 2
    output = pipe(PROMPT, mode="plain", binding="tome", **SMALL)
    assert json.loads(output.metadata[0]["phrases"]) == [] and output.metadata[0]["parser"] == "spacy"


@pytest.mark.parametrize("binding", ["magnet", "tome"])
def test_a_prompt_without_a_pair_runs_unchanged_with_one_warning(pipe, binding):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bound = pipe("a circle and a square", mode="values", binding=binding, **SMALL)
    notes = [str(w.message) for w in caught if "binding" in str(w.message)]
    assert notes == [f"binding {binding!r}: the prompt has no attribute-object pair, so the binding leaves it "
                     "unchanged"]
    assert psnr(bound.images[0], pipe("a circle and a square", mode="values", **SMALL).images[0]) == float("inf")


def test_bad_binding_input_is_one_line(pipe, capsys, tmp_path):
    with pytest.raises(InputError, match=re.escape("binding must be one of magnet, tome or None, not 'syngen'")):
        pipe(PROMPT, binding="syngen")
    with pytest.raises(InputError, match="binding must be"):
        pipe(PROMPT, binding=3)
    with pytest.raises(SystemExit):
        main(["generate", PROMPT, "--binding", "syngen", "--out", str(tmp_path / "x.png")])
    assert "invalid choice: 'syngen'" in capsys.readouterr().err
    for modes in ("plain,values+syngen", "plain,values+"):
        assert main(["eval", "--model", "tiny", "--modes", modes, "--out", str(tmp_path / "e.json")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "+magnet or +tome" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_cli_records_it(tmp_path):
    out = tmp_path / "x.png"
    assert main(["generate", PROMPT, "--binding", "magnet", "--mode", "plain", "--out", str(out), "--steps", "2",
                 "--width", "64", "--height", "64", "--quiet"]) == 0
    assert read_png_metadata(out)["binding"] == "magnet"
    sheet = tmp_path / "c.png"
    assert main(["compare", PROMPT, "--modes", "plain,plain+tome", "--seeds", "1", "--steps", "2", "--width", "64",
                 "--height", "64", "--quiet", "--out", str(sheet)]) == 0
    assert read_png_metadata(sheet)["modes"] == "plain,plain+tome"


FOUR_PAIRS = "a red car, a white sheep, a green bench and a yellow bird"


def engines_agree(pipe, folder) -> None:
    engines = StructuredDiffusionPipeline.from_engines(folder)
    for prompt, binding in ((PROMPT, "magnet"), (PROMPT, "tome"), (FOUR_PAIRS, "magnet")):
        settings = dict(mode="values", binding=binding, num_inference_steps=4, width=64, height=64, seed=11)
        assert psnr(engines(prompt, **settings).images[0], pipe(prompt, **settings).images[0]) >= 35, \
            (folder, prompt, binding)


def test_onnxruntime_engines_bind_as_the_torch_reference_does(pipe, tiny_engines):
    # FOUR_PAIRS asks Magnet for 26 texts; the set encodes at most 16 at once, so they go in two calls
    assert len(pipe.structure(pipe.check_inputs(FOUR_PAIRS, binding="magnet"))[0].pairs) == 4
    engines_agree(pipe, tiny_engines)


def test_openvino_engines_bind_as_the_torch_reference_does(pipe, tmp_path_factory):
    pytest.importorskip("openvino")
    openvino_set = tmp_path_factory.mktemp("openvino") / "tiny"
    assert main(["build-engine", "--backend", "openvino", "--size", "64:128", "--batch", "1:2", "--levels", "4",
                 "--quiet", "--out", str(openvino_set)]) == 0
    engines_agree(pipe, openvino_set)


def test_nested_pairs_merge_inner_first_and_keep_every_attribute(pipe):
    prompt = "a small red brick house"
    request = pipe.check_inputs(prompt, mode="plain", binding="tome")
    (structured,) = pipe.structure(request)
    pairs = [(pair.object.text, [part.text for part in pair.attributes]) for pair in structured.pairs]
    assert pairs == [("brick", ["red"]), ("house", ["small", "brick"])]
    e0 = encode(pipe, [prompt])[0]
    brick = 1.1 * e0[4] + 1.2 * e0[3]  # red (3) into brick (4), then small (2) and that into house (5)
    house = 1.1 * e0[5] + 1.2 * (e0[2] + brick)
    bound = pipe.condition([structured], request).level_states[1, 0]
    assert torch.allclose(bound[5], house, atol=1e-4) and bound[2:5].abs().sum() == 0


def test_a_callers_pairs_outside_the_tokens_are_one_line(pipe):
    from dataclasses import replace

    (structured,) = pipe.structure(pipe.check_inputs(PROMPT, binding="magnet"))
    pair = structured.pairs[0]
    broken = replace(structured, pairs=(replace(pair, object=replace(pair.object, start=80, end=81)),))
    with pytest.raises(InputError, match=re.escape("pair part 'circle' spans tokens [80, 81)")):
        pipe(broken, binding="magnet")
