"""The Python API: the README's example, engines against torch, batches, and one-line InputErrors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sd_struct_rt import InputError, StructuredDiffusionPipeline
from sd_struct_rt.image import read_png_metadata
from sd_struct_rt.structure.spans import PhraseSpan, StructuredPrompt

from tests.conftest import pixels, psnr

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"num_inference_steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


def test_the_readme_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    usage = README.read_text().split("## Using it", 1)[1]
    example = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    metadata = read_png_metadata(tmp_path / "car.png")
    assert metadata["seed"] == "7" and metadata["steps"] == "20" and metadata["size"] == "128x128"
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads(metadata["phrases"])
    assert [phrase["text"] for phrase in json.loads(printed)] == ["a red car", "a white sheep"]


def test_engines_and_torch_give_the_same_image(pipe, tiny_engines):
    engines = StructuredDiffusionPipeline.from_engines(tiny_engines)
    assert engines.backend == "onnxruntime-cpu" and pipe.backend == "torch-cpu"
    prompt = "a red car and a white sheep"
    on_engines, on_torch = engines(prompt, seed=3, **FAST), pipe(prompt, seed=3, **FAST)
    assert psnr(on_engines.images[0], on_torch.images[0]) >= 35
    assert on_engines.metadata[0]["phrases"] == on_torch.metadata[0]["phrases"]


def test_a_list_of_mixed_prompts_is_one_batch_equal_to_one_by_one(pipe):
    prompts = ["a red car and a white sheep", "cats", "a big dog on a small mat with a blue ball"]
    batched = pipe(prompts, seed=[5, 9, 2], negative_prompt=["", "blurry", ""], **FAST)
    levels = [len(json.loads(meta["phrases"])) for meta in batched.metadata]
    assert len(set(levels)) > 1  # the batch really mixed rows with different level counts
    for index, (prompt, seed, negative) in enumerate(zip(prompts, [5, 9, 2], ["", "blurry", ""])):
        alone = pipe(prompt, seed=seed, negative_prompt=negative, **FAST)
        assert abs(pixels(batched.images[index]) - pixels(alone.images[0])).max() <= 1
        assert batched.metadata[index] == alone.metadata[0]


def test_an_int_seed_counts_up_through_the_batch(pipe):
    out = pipe(["a cat", "a dog"], seed=40, **FAST)
    assert [meta["seed"] for meta in out.metadata] == ["40", "41"]
    assert abs(pixels(out.images[1]) - pixels(pipe("a dog", seed=41, **FAST).images[0])).max() <= 1


def test_save_writes_the_metadata_it_reports(pipe, tmp_path):
    out = pipe("a red car and a white sheep", seed=1, mode="keys", **FAST)
    path = out.save(0, tmp_path / "keys.png")
    assert read_png_metadata(path) == out.metadata[0]
    assert out.metadata[0]["mode"] == "keys" and out.metadata[0]["backend"] == "torch-cpu"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.png"]


def test_an_analysed_prompt_is_used_as_given(pipe):
    given = StructuredPrompt("a red car and a white sheep", (PhraseSpan("a white sheep", 4, 7),))
    out = pipe(given, seed=2, **FAST)
    assert json.loads(out.metadata[0]["phrases"]) == [{"text": "a white sheep", "span": [4, 7]}]
    parsed = pipe("a red car and a white sheep", seed=2, **FAST)
    assert pixels(out.images[0]).tolist() != pixels(parsed.images[0]).tolist()


def test_phrases_select_the_tree_parser(pipe):
    out = pipe("a red car and a white sheep", phrases=["a white sheep"], **FAST)
    assert out.metadata[0]["parser"] == "tree"
    assert json.loads(out.metadata[0]["phrases"]) == [{"text": "a white sheep", "span": [4, 7]}]


@pytest.mark.parametrize("arguments, message", [
    ({"guidance_scale": -1}, "guidance_scale must be 0 or more"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be 0 or more"),
    ({"num_inference_steps": 0}, "num_inference_steps must be between 1 and 1000"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number"),
    ({"width": 100}, "width 100 is not a multiple of 8"),
    ({"height": 4096}, "height must be between 64 and 2048"),
    ({"seed": -1}, "seed must be between 0 and 2**63-1"),
    ({"seed": [1, 2]}, "seed has 2 entries for 1 prompts"),
    ({"mode": "conjunction"}, "mode must be one of values, keys, plain"),
    ({"parser": "nltk"}, "parser must be one of spacy, stanza, scene-graph, tree"),
    ({"parser": "spacy", "phrases": ["a cat"]}, "phrases and trees go with parser='tree'"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt has 2 entries for 1 prompts"),
    ({"max_levels": 0}, "max_levels must be between 1 and 64"),
], ids=lambda value: str(value)[:40])
def test_bad_arguments_raise_one_line_naming_the_parameter(pipe, arguments, message):
    with pytest.raises(InputError) as caught:
        pipe("a red car", **{**FAST, **arguments})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "--" not in str(caught.value)  # no CLI flags in the API's words


@pytest.mark.parametrize("prompt, message", [
    ("  . ", "the prompt is empty"),
    (["a cat", ""], "prompt 1 is empty"),
    ([], "prompt is an empty list"),
    (42, "prompt must be a string or a list of strings"),
])
def test_bad_prompts_are_refused(pipe, prompt, message):
    with pytest.raises(InputError, match=re.escape(message)):
        pipe(prompt, **FAST)


def test_inputs_are_checked_before_any_compute(pipe, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("a network ran before the inputs were checked")

    monkeypatch.setattr(pipe, "structure", no_compute)
    monkeypatch.setattr(pipe, "condition", no_compute)
    with pytest.raises(InputError, match="guidance_scale"):
        pipe("a red car and a white sheep", guidance_scale=-2, **FAST)


def test_engine_profile_is_checked_in_stage_one(tiny_engines):
    engines = StructuredDiffusionPipeline.from_engines(tiny_engines)
    with pytest.raises(InputError, match=r"batch 3 is outside the engine's 1\.\.2; rebuild with: .*--batch 1:3"):
        engines.check_inputs(["a cat", "a dog", "a bird"], **FAST)
    with pytest.raises(InputError, match="width 192 is outside the engine's 64..128"):
        engines.check_inputs("a cat", num_inference_steps=2, width=192, height=64)
    assert engines.check_inputs("a cat", **FAST).max_levels == 4  # the profile's levels cap the request


def test_generation_does_not_touch_the_global_random_state(pipe):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pipe("a cat", seed=8, **FAST)
    assert torch.equal(torch.rand(3), expected)
