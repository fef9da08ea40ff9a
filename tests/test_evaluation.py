"""sdrt eval: its statistics, its pairing of modes image for image, scorers built in and plugged in."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from sd_struct_rt import InputError, StructuredDiffusionPipeline
from sd_struct_rt.evaluation import evaluate, load_scorer, mcnemar, summarise, wilson_interval
from sd_struct_rt.image import read_png_metadata
from sd_struct_rt.shapes import world
from sd_struct_rt.shapes.scorer import ShapesScorer

from tests.hardening import one_error_line, run_sdrt, sdrt_output


def test_wilson_intervals_match_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775 (the normal interval gives 0-0).
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    assert mcnemar(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert mcnemar(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar(5, 5) == pytest.approx(1.0)
    assert mcnemar(0, 0) == 1.0


def test_the_shapes_scorer_counts_binding_not_just_objects():
    scorer = load_scorer("shapes")
    assert isinstance(scorer, ShapesScorer)
    rng = np.random.default_rng(9)
    drawn = Image.fromarray(world.render(world.place([("red", "circle"), ("blue", "square")], rng)))
    right = scorer.score("a red circle and a blue square", drawn)
    swapped = scorer.score("a blue circle and a red square", drawn)
    assert (right.success, right.outcome) == (True, "exact")
    assert (swapped.success, swapped.outcome) == (False, "colour_swap")
    assert sorted(map(tuple, swapped.details["detected"])) == [("blue", "square"), ("red", "circle")]
    with pytest.raises(InputError, match="cannot judge"):
        scorer.check("a red car")


class BrightScorer:
    """A user's scorer: success when the image is brighter than mid-grey."""

    name = "bright"

    def score(self, prompt, image):
        from sd_struct_rt.evaluation import Score

        brightness = float(np.asarray(image).mean())
        return Score(brightness > 127.5, "bright" if brightness > 127.5 else "dark", {"brightness": brightness})


@pytest.fixture(scope="module")
def tiny_pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


def test_every_mode_gets_the_same_prompts_and_seeds(tiny_pipe):
    # One noun phrase spanning the prompt adds no level, so plain and values draw the same
    # image from the same seed: any pairing slip would show as a discordant image.
    prompts = ["a red car", "a red car and a white sheep"]
    trials, images = evaluate(tiny_pipe, prompts, [3, 4], ["plain", "values"], BrightScorer(), batch_size=3,
                              num_inference_steps=2, width=64, height=64)
    assert [(t.prompt, t.seed, t.mode) for t in trials] == [
        (prompt, seed, mode) for mode in ("plain", "values") for prompt in prompts for seed in (3, 4)]
    for seed in (3, 4):
        assert images[("a red car", seed, "plain")] == images[("a red car", seed, "values")]
    assert images[("a red car and a white sheep", 3, "plain")] != images[("a red car and a white sheep", 3, "values")]
    summary = summarise(trials, ["plain", "values"])
    assert summary["modes"]["plain"]["images"] == 4
    assert summary["paired"]["values_vs_plain"]["pairs"] == 4


def test_a_scorer_refuses_prompts_before_any_image_is_made(tiny_pipe, monkeypatch):
    made = []
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *args, **kwargs: made.append(1))
    with pytest.raises(InputError, match="cannot judge"):
        evaluate(tiny_pipe, ["a red circle", "a red car"], [0], ["plain"], ShapesScorer(), num_inference_steps=2)
    assert not made


def test_a_plugged_in_scorer_is_loaded_by_module_and_name(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text("class Judge:\n    name = 'mine'\n    def score(self, prompt, image):\n"
                                           "        raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_scorer("my_judges:Judge").name == "mine"
    for spec, message in [("nowhere:Judge", "cannot load scorer"), ("my_judges:Missing", "cannot load scorer"),
                          ("sys:path", "has no score"), ("loud", "must be one of shapes")]:
        with pytest.raises(InputError, match=message):
            load_scorer(spec)
    sys.modules.pop("my_judges", None)


def test_sdrt_eval_on_shapes_writes_rates_tests_and_a_sheet(tmp_path, capsys):
    out, sheet = tmp_path / "r.json", tmp_path / "sheet.png"
    code, stdout, stderr = sdrt_output(capsys, "eval", "--model", "shapes", "--prompts", "held-out", "--limit", "3",
                                       "--seeds", "2", "--steps", "10", "--guidance", "3", "--out", str(out),
                                       "--sheet", str(sheet), "--quiet")
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["scorer"] == "shapes" and result["modes"] == ["plain", "values", "keys", "composable"]
    assert len(result["trials"]) == 3 * 2 * 4
    for row in result["summary"]["modes"].values():
        low, high = row["ci95"]
        assert row["images"] == 6 and low <= row["success_rate"] <= high
        assert sum(row["outcomes"].values()) == 6
    assert set(result["summary"]["paired"]) == {"values_vs_plain", "keys_vs_plain", "composable_vs_plain"}
    assert "binding success" in stdout and "McNemar" in stdout
    with Image.open(sheet) as image:
        assert image.height > 6 * 128  # a row of 128-pixel cells per prompt and seed
    assert len(json.loads(read_png_metadata(sheet)["outcomes"])) == 24


def test_sdrt_eval_without_a_scorer_writes_only_the_sheet(tmp_path, capsys):
    prompts, sheet = tmp_path / "prompts.txt", tmp_path / "sheet.png"
    prompts.write_text("a red car and a white sheep\na blue bird\n")
    code, stdout, stderr = sdrt_output(capsys, "eval", "--model", "tiny", "--prompts-file", str(prompts),
                                       "--seeds", "1", "--steps", "2", "--modes", "plain,values",
                                       "--sheet", str(sheet), "--quiet")
    assert code == 0, stderr
    assert sheet.is_file() and "binding success" not in stdout


@pytest.mark.parametrize("arguments, message", [
    (["--prompts-file", "{prompts}", "--model", "shapes"], "cannot judge"),
    (["--prompts", "held-out", "--modes", "plain,plain"], "distinct modes"),
    (["--prompts", "held-out", "--modes", "plain,loud"], "mode"),
    (["--prompts", "held-out", "--scorer", "nowhere:Judge"], "cannot load scorer"),
])
def test_bad_eval_input_is_one_line_and_leaves_nothing(tmp_path, capsys, arguments, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\n")
    arguments = [argument.format(prompts=prompts) for argument in arguments]
    one_error_line(*run_sdrt(capsys, "eval", *arguments, "--seeds", "1", "--steps", "2",
                             "--out", str(tmp_path / "r.json"), "--quiet"), message)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prompts.txt"]
