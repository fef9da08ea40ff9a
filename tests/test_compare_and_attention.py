"""sdrt compare's labelled grid, and attention maps from the torch reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sd_struct_rt import InputError, StructuredDiffusionPipeline
from sd_struct_rt.attention import AttentionRecorder
from sd_struct_rt.attention_maps import heat_centroid
from sd_struct_rt.image import read_png_metadata

from tests.hardening import one_error_line, run_sdrt

PROMPT = "a red car and a white sheep"
FAST = {"num_inference_steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


def test_compare_writes_one_grid_with_a_row_per_mode_and_a_column_per_seed(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert run_sdrt(capsys, "compare", PROMPT, "--modes", "plain,values", "--seeds", "3", "--steps", "2",
                    "--width", "64", "--height", "64", "--scale", "2", "--quiet", "--out", str(out))[0] == 0
    with Image.open(out) as grid:
        assert grid.width > 3 * 128 and grid.height > 2 * 128  # three columns, two rows of 128-pixel cells
    meta = read_png_metadata(out)
    assert meta["modes"] == "plain,values" and meta["seeds"] == "0,1,2"
    one_error_line(*run_sdrt(capsys, "compare", PROMPT, "--modes", "plain,loud", "--out", str(tmp_path / "x.png")),
                   "--modes takes values, keys, plain")


def test_recording_attention_leaves_the_image_as_it_was(pipe):
    plain = pipe(PROMPT, seed=4, **FAST)
    recorded = pipe(PROMPT, seed=4, attention_maps=True, **FAST)
    assert recorded.png(0) == plain.png(0)
    maps = recorded.attention[0]
    assert list(maps)[:7] == ["token 0 a", "token 1 red", "token 2 car", "token 3 and", "token 4 a", "token 5 white",
                              "token 6 sheep"]
    assert np.allclose(maps["phrase a white sheep"], np.mean([maps["token 4 a"], maps["token 5 white"],
                                                              maps["token 6 sheep"]], axis=0))
    assert all(heat.shape == (8, 8) and np.isfinite(heat).all() for heat in maps.values())


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_maps_are_probabilities(pipe, mode):
    """Over every text position a query's attention sums to 1, so the maps of all 77 positions
    sum to 1 everywhere; the recorder keeps that through heads, levels, layers and steps."""
    request = pipe.check_inputs(PROMPT, mode=mode, **FAST)
    conditioning = pipe.condition(pipe.structure(request), request)
    recorder = AttentionRecorder(8, 8)
    with pipe.recording_unet(mode).recording(recorder):
        pipe.denoise(conditioning, pipe.initial_latents(request), request)
    assert np.allclose(recorder.maps()[0].sum(dim=0).numpy(), 1.0, atol=1e-4)


def test_the_cli_writes_overlays_and_an_index(tmp_path, capsys):
    maps = tmp_path / "maps"
    assert run_sdrt(capsys, "generate", PROMPT, "--steps", "2", "--width", "64", "--height", "64", "--quiet",
                    "--out", str(tmp_path / "car.png"), "--attention-maps", str(maps))[0] == 0
    index = json.loads((maps / "car-attention.json").read_text())
    assert index["cross_attention_downsampling"] == [1, 2, 4, 8]
    assert "phrase a red car" in index["maps"] and "token 6 sheep" in index["maps"]
    assert all((maps / entry["file"]).is_file() for entry in index["maps"].values())
    assert all(0 <= entry["centroid_xy"][0] <= 64 for entry in index["maps"].values())

    assert run_sdrt(capsys, "generate", PROMPT, "--steps", "2", "--width", "64", "--height", "64", "--quiet",
                    "--out", str(tmp_path / "fine.png"), "--attention-maps", str(maps),
                    "--attention-downsampling", "1,2")[0] == 0
    fine = json.loads((maps / "fine-attention.json").read_text())
    assert fine["cross_attention_downsampling"] == [1, 2]
    assert fine["maps"]["token 2 car"]["centroid_xy"] != index["maps"]["token 2 car"]["centroid_xy"]


def test_a_layer_choice_the_model_lacks_is_one_line(pipe, tmp_path, capsys):
    for bad in ([3], 2.0, [2.0], "2", [True], []):
        with pytest.raises(InputError, match="attention_downsampling must be among 1, 2, 4, 8"):
            pipe(PROMPT, attention_maps=True, attention_downsampling=bad, **FAST)
    with pytest.raises(InputError, match="goes with attention_maps=True"):
        pipe(PROMPT, attention_downsampling=[2], **FAST)
    base = ("generate", PROMPT, "--out", str(tmp_path / "x.png"))
    one_error_line(*run_sdrt(capsys, *base, "--attention-maps", str(tmp_path / "maps"), "--attention-downsampling",
                             "16"), "--attention-downsampling must be among 1, 2, 4, 8")
    one_error_line(*run_sdrt(capsys, *base, "--attention-downsampling", "2"), "goes with --attention-maps")
    one_error_line(*run_sdrt(capsys, *base, "--attention-maps", str(tmp_path / "maps"), "--attention-downsampling",
                             "two"), "whole numbers separated by commas")
    assert not list(tmp_path.iterdir())


def test_the_recorder_averages_only_the_layers_asked_for(pipe):
    """Each layer's probabilities sum to 1 over text positions, so a subset's average does too;
    the subset's maps are those layers' alone, not all layers' maps relabelled."""
    request = pipe.check_inputs(PROMPT, **FAST)
    conditioning = pipe.condition(pipe.structure(request), request)
    recorders = {layers: AttentionRecorder(8, 8, layers) for layers in (None, (1,), (8,))}
    for recorder in recorders.values():
        with pipe.recording_unet("values").recording(recorder):
            pipe.denoise(conditioning, pipe.initial_latents(request), request)
    assert recorders[None].recorded == {1, 2, 4, 8}
    assert recorders[(1,)].recorded == {1} and recorders[(8,)].recorded == {8}
    assert recorders[None].layers > recorders[(1,)].layers > 0
    for recorder in recorders.values():
        assert np.allclose(recorder.maps()[0].sum(dim=0).numpy(), 1.0, atol=1e-4)
    coarse = recorders[(8,)].maps()[0]  # one 1x1 grid per layer: every position of a map is equal
    assert np.allclose(coarse, coarse[:, :1, :1])
    assert not np.allclose(recorders[(1,)].maps(), recorders[None].maps())


@pytest.mark.parametrize("model, side", [("tiny", 64), ("tiny", 224), ("tiny-sdxl", 64), ("shapes", 64),
                                         ("shapes", 72)])
def test_every_layer_is_recorded_at_any_image_size(model, side):
    """Stride-2 steps round odd sides up (a latent side of 18 gives grids 9 and 5), so every
    cross-attention layer the model has must be recognised and averaged, at native and odd sizes."""
    pipe = StructuredDiffusionPipeline.from_pretrained(model, device="cpu")
    request = pipe.check_inputs("a red circle", num_inference_steps=1, width=side, height=side)
    conditioning = pipe.condition(pipe.structure(request), request)
    latents = pipe.initial_latents(request)
    recorder = AttentionRecorder(*latents.shape[2:])
    with pipe.recording_unet("values").recording(recorder):
        pipe.denoise(conditioning, latents, request)
    assert recorder.recorded == set(pipe.recording_unet("values").cross_attention_downsampling())
    assert recorder.maps().shape[-2:] == latents.shape[2:]


def test_cross_attention_grids_follow_the_blocks():
    """SD 1.x's layout: cross-attention in down blocks 0-2, the mid block and up blocks 1-3."""
    from diffusers import UNet2DConditionModel

    from sd_struct_rt.attention import StructuredUNet

    assert StructuredDiffusionPipeline.from_pretrained("shapes", device="cpu").recording_unet(
        "values").cross_attention_downsampling() == (2, 4)
    unet = UNet2DConditionModel(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, cross_attention_dim=8,
                                attention_head_dim=2, layers_per_block=1, sample_size=8)
    assert StructuredUNet(unet).cross_attention_downsampling() == (1, 2, 4, 8)


def test_engines_cannot_give_attention_maps(tiny_engines, tmp_path, capsys):
    with pytest.raises(InputError, match="attention maps need the torch reference"):
        StructuredDiffusionPipeline.from_engines(tiny_engines)(PROMPT, attention_maps=True, **FAST)
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--engine", str(tiny_engines), "--attention-maps",
                             str(tmp_path / "maps"), "--out", str(tmp_path / "x.png")), "torch reference")
    assert not list(tmp_path.iterdir())


def test_the_centroid_of_a_map_is_where_its_heat_is():
    heat = np.zeros((8, 8))
    heat[1, 6] = 1.0
    x, y = heat_centroid(heat, (64, 64))
    assert abs(x - 52) < 1 and abs(y - 12) < 1
