"""The shapes-clip recipe: bit-identical reruns, faithful flawed captions, and an honest probe."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.training import TRAIN_FOLDER, run_recipe, weights_and_configs

TRAIN_SCRIPT = TRAIN_FOLDER / "train_shapes_clip.py"
SHORT_RECIPE = ["--scenes", "64", "--clip-steps", "3", "--clip-batch", "16", "--unet-steps", "3", "--threads", "2"]


def train(out: Path, *arguments: str):
    return run_recipe("train_shapes_clip.py", out, *arguments)


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(TRAIN_FOLDER))  # the script imports train_shapes from its own folder
    try:
        spec = importlib.util.spec_from_file_location("train_shapes_clip", TRAIN_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(TRAIN_FOLDER))


def test_two_runs_of_one_recipe_write_bit_identical_folders(tmp_path):
    first, second = train(tmp_path / "a", *SHORT_RECIPE), train(tmp_path / "b", *SHORT_RECIPE)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    files = weights_and_configs(tmp_path / "a")
    assert files == weights_and_configs(tmp_path / "b")
    third = train(tmp_path / "c", *SHORT_RECIPE, "--seed", "1")
    assert third.returncode == 0, third.stderr[-2000:]
    changed = weights_and_configs(tmp_path / "c")
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert changed[name] != files[name], name  # else the comparison above proves nothing
    # The VAE is the shapes model's, as shipped; the folder says what it draws best at.
    shipped = Path(__file__).resolve().parent.parent / "sd_struct_rt" / "models" / "shapes" / "vae"
    assert files["vae/diffusion_pytorch_model.safetensors"] == \
        (shipped / "diffusion_pytorch_model.safetensors").read_bytes()
    assert json.loads(files["sdrt_defaults.json"]) == {"guidance_scale": 3.0, "num_inference_steps": 30}
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert log["phases"]["clip"]["reached_cap"] and log["phases"]["unet"]["text_encoder"] == "frozen"
    for split in ("seen", "held_out"):
        probe = log["notes"]["binding_probe"][split]
        assert probe["scenes"] >= 500 and probe["ci95"][0] <= probe["accuracy"] <= probe["ci95"][1]


def test_the_frozen_text_tower_ships_unchanged_by_the_unet_phase(tmp_path, recipe):
    """The UNet phase must not train the text encoder: the shipped tower is the probed CLIP's."""
    import torch
    from transformers import CLIPTextModel

    out = tmp_path / "probe"
    assert train(out, *SHORT_RECIPE, "--probe-only").returncode == 0
    assert sorted(path.name for path in out.iterdir()) == ["tokenizer", "training_log.json"]
    # The same CLIP phase, then 3 or 5 UNet steps: a text encoder that trained would differ.
    longer, shorter = tmp_path / "longer", tmp_path / "shorter"
    assert train(longer, *SHORT_RECIPE, "--unet-steps", "5").returncode == 0
    assert train(shorter, *SHORT_RECIPE).returncode == 0
    first = CLIPTextModel.from_pretrained(longer / "text_encoder").state_dict()
    second = CLIPTextModel.from_pretrained(shorter / "text_encoder").state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (longer / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != \
        (shorter / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert json.loads((out / "training_log.json").read_text())["notes"]["binding_probe"] == \
        json.loads((longer / "training_log.json").read_text())["notes"]["binding_probe"]


def test_flawed_captions_only_ever_name_what_the_scene_holds(recipe):
    from sd_struct_rt.shapes import world

    rng = np.random.default_rng(0)
    kinds = {(2, True): "both", (1, True): "larger_only", (2, False): "both_without_colours",
             (1, False): "larger_without_colour"}
    counts = dict.fromkeys(kinds.values(), 0)
    for _ in range(2000):
        scene = world.sample_scene(rng, object_count=2, split="any")
        caption = recipe.web_caption(scene, rng, recipe.CAPTION_MIX)
        parts = caption.split(" and ")
        counts[kinds[len(parts), all(len(part.split()) == 3 for part in parts)]] += 1
        for part in parts:
            words = part.split()
            assert words[0] == "a"
            assert any(words[-1] == obj.shape and (len(words) == 2 or words[1] == obj.colour)
                       for obj in scene.objects), (caption, scene)
        if len(parts) == 1:  # saliency: the one named is the larger (or, tied, the first drawn)
            larger = max(scene.objects, key=lambda obj: obj.geometry.half_size)
            assert parts[0].endswith(larger.shape)
    assert all(abs(counts[kind] / 2000 - share) < 0.04 for kind, share in recipe.CAPTION_MIX.items()), counts


def test_the_probe_pits_a_caption_against_its_colour_swap(recipe):
    from sd_struct_rt.shapes import world

    scene = world.place([("red", "circle"), ("blue", "square")], np.random.default_rng(1))
    assert recipe.swapped_colours(scene) == "a blue circle and a red square"
    assert sorted(recipe.swapped_colours(scene).split()) == sorted(world.caption(scene).split())


@pytest.mark.parametrize("mix, message", [
    ("both=1", "needs each of both, larger_only"),
    ("both=0.5,larger_only=0.5,both_without_colours=0.5,larger_without_colour=-0.5", "non-negative"),
    ("both", "must look like"),
])
def test_a_bad_caption_mix_is_one_line(tmp_path, mix, message):
    result = train(tmp_path / "x", "--caption-mix", mix)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()
