"""Composable Diffusion as a mode (SPEC 3.6): one conditional row per component, guidance summed."""

import json
import warnings

import numpy as np
import pytest
import torch

from tests.conftest import pixels, psnr
from sd_struct_rt import InputError, StructuredDiffusionPipeline

PROMPT = "a red car and a white sheep"
PHRASES = ["a red car", "a white sheep"]
SETTINGS = dict(num_inference_steps=4, guidance_scale=3.0, width=64, height=64)


@pytest.fixture(scope="module")
def pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny")


def from_scratch(model, components: list[str], seed: int, steps: int, guidance: float, side: int) -> np.ndarray:
    """Liu et al.'s sum over the diffusers modules themselves: no pipeline code at all."""
    tokenizer, scheduler = model.tokenizer, type(model.scheduler).from_config(model.scheduler.config)

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return model.text_encoder(ids).last_hidden_state

    with torch.no_grad():
        unconditional, conditions = encode(""), [encode(text) for text in components]
        latents = torch.randn((1, 4, side // 8, side // 8), generator=torch.Generator().manual_seed(seed))
        latents = latents * scheduler.init_noise_sigma
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            sample = scheduler.scale_model_input(latents, t)
            eps_u = model.unet(sample, t, unconditional).sample
            eps = eps_u + guidance * sum(model.unet(sample, t, c).sample - eps_u for c in conditions)
            latents = scheduler.step(eps, t, latents).prev_sample
        image = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    return ((image / 2 + 0.5).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy().astype(int)


def unet_rows(pipe, monkeypatch) -> list[int]:
    """The row count of every UNet call the pipeline makes from now on."""
    calls = []
    for role, unet in list(pipe.networks.unets.items()):
        def counting(*args, _unet=unet, **inputs):
            calls.append(inputs["sample"].shape[0])
            return _unet(*args, **inputs)
        monkeypatch.setitem(pipe.networks.unets, role, counting)
    return calls


def test_composable_equals_a_from_scratch_loop_over_the_components(pipe, tiny):
    out = pipe(PROMPT, seed=3, mode="composable", phrases=PHRASES, **SETTINGS)
    expected = from_scratch(tiny, [PROMPT, *PHRASES], 3, SETTINGS["num_inference_steps"],
                            SETTINGS["guidance_scale"], 64)
    assert np.abs(pixels(out.images[0]) - expected).max() <= 1
    # The sum must be over the phrases too: the full prompt alone is another picture.
    assert np.abs(from_scratch(tiny, [PROMPT], 3, 4, 3.0, 64) - expected).max() > 8


def test_each_prompt_costs_one_plus_k_conditional_rows_and_one_unconditional(pipe, monkeypatch):
    rows = unet_rows(pipe, monkeypatch)
    out = pipe([PROMPT, "a cat"], seed=0, mode="composable", **SETTINGS)
    phrases = [len(json.loads(metadata["phrases"])) for metadata in out.metadata]
    assert phrases == [2, 0]
    # Prompt 0: 1 + 2 conditional rows; prompt 1, without phrases, 1; and one unconditional each.
    assert set(rows) == {2 + 3 + 1}
    rows.clear()
    pipe([PROMPT, "a cat"], seed=0, mode="values", **SETTINGS)
    assert set(rows) == {4}


def test_a_prompt_without_phrases_is_plain_and_says_so_once(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composed = pipe("a cat", seed=5, mode="composable", **SETTINGS)
    notes = [str(w.message) for w in caught if "composable" in str(w.message)]
    assert notes == ["mode 'composable': the prompt has no phrase, so it is generated as plain"]
    plain = pipe("a cat", seed=5, mode="plain", **SETTINGS)
    assert np.array_equal(pixels(composed.images[0]), pixels(plain.images[0]))
    assert composed.metadata[0]["mode"] == "composable"


def test_an_unknown_mode_names_every_choice(pipe):
    with pytest.raises(InputError, match="mode must be one of values, keys, plain, composable, not 'sum'"):
        pipe(PROMPT, mode="sum")


def test_onnxruntime_engines_draw_what_the_torch_reference_and_the_loop_draw(pipe, tiny, tiny_engines, monkeypatch):
    engines = StructuredDiffusionPipeline.from_engines(tiny_engines)
    rows = unet_rows(engines, monkeypatch)
    prompts = [PROMPT, "a small blue bird on a big green tree"]
    reference = pipe(prompts, seed=1, mode="composable", **SETTINGS)
    built = engines(prompts, seed=1, mode="composable", **SETTINGS)
    for ours, theirs in zip(built.images, reference.images):
        assert psnr(ours, theirs) >= 35
    assert [entry["text"] for entry in json.loads(built.metadata[0]["phrases"])] == PHRASES
    assert psnr(built.images[0], from_scratch(tiny, [PROMPT, *PHRASES], 1, 4, 3.0, 64)) >= 35
    needed = 2 + sum(1 + len(json.loads(metadata["phrases"])) for metadata in built.metadata)
    # The set's profile holds 2 prompts, 4 rows: a step of more rows is several full calls.
    assert engines.unet_rows == (2, 4) and needed > 4
    calls_per_step = -(-needed // 4)
    assert len(rows) % calls_per_step == 0
    assert rows[:calls_per_step] == [4] * (needed // 4) + ([needed % 4] if needed % 4 else [])


def test_a_short_last_call_is_filled_up_to_the_engines_least_rows(pipe, tiny_engines, monkeypatch):
    """TensorRT refuses fewer rows than its profile's least; ONNX Runtime would not notice."""
    engines = StructuredDiffusionPipeline.from_engines(tiny_engines)
    rows = unet_rows(engines, monkeypatch)
    prompts = ["a red car and a cat", "a red car"]  # one phrase, then none: 2 + 2 + 1 = 5 rows
    built = engines(prompts, seed=4, mode="composable", phrases=["a red car"], **SETTINGS)
    assert rows[:2] == [4, 2] and set(rows) == {4, 2}  # 4 + 1, the one row sent twice
    reference = pipe(prompts, seed=4, mode="composable", phrases=["a red car"], **SETTINGS)
    for ours, theirs in zip(built.images, reference.images):
        assert psnr(ours, theirs) >= 35


def test_attention_maps_are_refused_in_composable_mode(pipe):
    with pytest.raises(InputError, match="attention maps need one conditional row per prompt"):
        pipe(PROMPT, mode="composable", attention_maps=True, **SETTINGS)


def test_the_batcher_serves_composable_requests_beside_others(pipe):
    from sd_struct_rt.serve.batcher import Batcher

    batcher = Batcher(pipe, max_batch_rows=3)  # less than the composable job's 4 rows
    try:
        futures = [batcher.submit(PROMPT, seed=2, mode="composable", phrases=PHRASES, **SETTINGS),
                   batcher.submit(PROMPT, seed=2, mode="plain", **SETTINGS)]
        served = [future.result(timeout=120) for future in futures]
    finally:
        batcher.close()
    alone = pipe(PROMPT, seed=2, mode="composable", phrases=PHRASES, **SETTINGS)
    assert psnr(served[0].images[0], alone.images[0]) >= 60
    assert psnr(served[1].images[0], pipe(PROMPT, seed=2, mode="plain", **SETTINGS).images[0]) >= 60
