"""SD 2.x and SDXL: plain mode equals diffusers, SPEC P1-P4 hold against an independent per-level
loop, the structure carries over (pad ids never leak, pooled embeddings from the whole prompt),
and ONNX Runtime engines match the torch reference in both modes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sd_struct_rt import StructuredDiffusionPipeline
from sd_struct_rt.attention import StructuredUNet
from sd_struct_rt.families import family_named
from sd_struct_rt.model import load_model
from sd_struct_rt.structure.spans import PhraseSpan, StructuredPrompt

from tests.conftest import relative_error
from tests.hardening import run_sdrt
from tests.test_attention import naive_unet_call

FAMILIES = {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}
PROMPT = "a red car and a white sheep"


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    return load_model(request.param)


def test_each_tiny_model_is_read_as_its_family(model):
    assert model.facts.family == FAMILIES[model.model_id]
    if model.facts.family == "sdxl":
        assert model.facts.pooled_width == 32 and model.facts.text_width == 96
        assert model.facts.force_zeros_for_empty_prompt and model.facts.size_step == 32
    if model.facts.family == "sd2":
        assert model.tokenizer.pad_token_id == 0 and model.scheduler.config.prediction_type == "v_prediction"


def diffusers_pipeline(model):
    import diffusers

    parts = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                 scheduler=type(model.scheduler).from_config(model.scheduler.config))
    if model.facts.family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
                                                   force_zeros_for_empty_prompt=True, **parts)
    return diffusers.StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False, **parts)


def test_plain_mode_equals_diffusers(model):
    ours = StructuredDiffusionPipeline.from_pretrained(model.model_id, device="cpu")
    request = ours.check_inputs(PROMPT, seed=5, num_inference_steps=4, width=64, height=64, mode="plain")
    latents = ours.initial_latents(request)
    ours_image = np.asarray(ours(PROMPT, seed=5, num_inference_steps=4, width=64, height=64, mode="plain").images[0])
    reference = diffusers_pipeline(copy.deepcopy(model))
    # diffusers treats an absent negative prompt as SDXL's zeros, ours an empty one (the default)
    negative = None if model.facts.family == "sdxl" else ""
    theirs = reference(PROMPT, negative_prompt=negative, num_inference_steps=4, guidance_scale=7.5, width=64,
                       height=64, latents=latents.clone(), output_type="np").images[0]
    theirs_image = (theirs * 255).round().clip(0, 255).astype(np.uint8)
    assert np.abs(ours_image.astype(int) - theirs_image.astype(int)).max() <= 1


def added_conditions(model, rows: int, generator: torch.Generator) -> dict:
    if model.facts.family != "sdxl":
        return {}
    return {"text_embeds": torch.randn(rows, model.facts.pooled_width, generator=generator),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).expand(rows, 6)}


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_p1_to_p4_hold_for_every_family(model, mode):
    generator = torch.Generator().manual_seed(3)
    width = model.facts.text_width
    counts = [1, 3, 2]
    rows, levels = len(counts), max(counts)
    sample = torch.randn(rows, 4, 8, 8, generator=generator)
    timestep = torch.rand(rows, generator=generator) * 999
    context = torch.randn(rows, 77, width, generator=generator)
    stacked = torch.randn(rows, levels, 77, width, generator=generator)
    mask = (torch.arange(levels)[None] < torch.tensor(counts)[:, None]).float()
    added = added_conditions(model, rows, generator)
    family = family_named(model.facts.family)
    names = tuple(added)
    ours = StructuredUNet(copy.deepcopy(model.unet), mode, added=names).eval()
    with torch.no_grad():
        batched = ours(sample, timestep, context, stacked, mask, *added.values())
        plain = model.unet(sample, timestep, context, added_cond_kwargs=added or None).sample
        one_level = ours(sample, timestep, context, context[:, None], torch.ones(rows, 1), *added.values())
    assert torch.equal(one_level, plain)  # P1, exactly
    levels_of = [[stacked[:, i] for i in range(n)] for n in counts]
    naive = naive_unet_call(model.unet, sample, timestep,
                            key_levels=[[context] if mode == "values" else row for row in levels_of],
                            value_levels=[row if mode == "values" else [context] for row in levels_of],
                            added=added)
    assert relative_error(batched, naive) <= 1e-5  # P2, and P3/P4: padded rows of different level counts
    assert family.cross_attention_count(model) == sum(1 for name, _ in model.unet.named_modules()
                                                      if name.endswith("attn2"))


def test_the_pad_id_never_leaks_into_an_aligned_sequence(model):
    pipe = StructuredDiffusionPipeline.from_pretrained(model.model_id, device="cpu")
    prompt = StructuredPrompt(PROMPT, (PhraseSpan("a white sheep", 4, 7),))
    request = pipe.check_inputs(prompt, num_inference_steps=1, width=64, height=64)
    conditioning = pipe.condition(pipe.structure(request), request)
    e0, aligned = conditioning.level_states[1, 0], conditioning.level_states[1, 1]
    phrase, _ = pipe.encode_texts(["a white sheep"])
    assert torch.equal(aligned[5:8], phrase[0, 1:4])  # the phrase's own tokens, BOS skipped
    assert torch.equal(aligned[:5], e0[:5]) and torch.equal(aligned[8:], e0[8:])  # never its padding


def test_sdxl_pooled_embeddings_come_from_the_whole_prompt_and_zeros_for_an_empty_negative():
    pipe = StructuredDiffusionPipeline.from_pretrained("tiny-sdxl", device="cpu")
    request = pipe.check_inputs(PROMPT, num_inference_steps=1, width=64, height=64, negative_prompt="")
    conditioning = pipe.condition(pipe.structure(request), request)
    _, pooled = pipe.encode_texts([PROMPT])
    assert conditioning.pooled.shape == (2, 32)
    assert torch.equal(conditioning.pooled[0], torch.zeros(32))  # force_zeros_for_empty_prompt
    assert torch.equal(conditioning.encoder_hidden_states[0], torch.zeros(77, 96))
    assert torch.allclose(conditioning.pooled[1], pooled[0])
    blurry = pipe.check_inputs(PROMPT, num_inference_steps=1, width=64, height=64, negative_prompt="blurry")
    with_negative = pipe.condition(pipe.structure(blurry), blurry)
    assert with_negative.pooled[0].abs().sum() > 0
    inputs = pipe.family.unet_inputs(torch.zeros(2, 4, 8, 12), torch.zeros(2), conditioning, "values", pipe.facts)
    assert inputs["time_ids"].tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * 2


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
@pytest.mark.parametrize("mode", ["values", "keys"])
def test_onnxruntime_engines_match_the_torch_reference(name, mode, tmp_path, capsys):
    folder = tmp_path / f"{name}-{mode}"
    assert run_sdrt(capsys, "build-engine", "--model", name, "--backend", "onnxruntime", "--mode", mode,
                    "--batch", "1:2", "--size", "64:64", "--levels", "3", "--quiet", "--out", str(folder))[0] == 0
    code, stderr = run_sdrt(capsys, "check-engine", str(folder))  # mixed level counts at the largest call
    assert code == 0, stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_facts"]["family"] == FAMILIES[name]
    if name == "tiny-sdxl":
        assert "tokenizer_2/vocab.json" in manifest["files"]


def test_sdxl_from_the_command_line(tmp_path, capsys):
    from sd_struct_rt.image import read_png_metadata

    folder = tmp_path / "xl"
    assert run_sdrt(capsys, "build-engine", "--model", "tiny-sdxl", "--backend", "onnxruntime", "--size", "64:128",
                    "--quiet", "--out", str(folder))[0] == 0
    out = tmp_path / "xl.png"
    assert run_sdrt(capsys, "generate", PROMPT, "--engine", str(folder), "--steps", "3", "--width", "96",
                    "--height", "64", "--quiet", "--out", str(out))[0] == 0
    meta = read_png_metadata(out)
    assert meta["model"] == "tiny-sdxl" and meta["size"] == "96x64"
    code, stderr = run_sdrt(capsys, "bench", "--engine", str(folder), "--rounds", "1", "--steps", "1", "--quiet",
                            "--json")
    assert code == 0, stderr
