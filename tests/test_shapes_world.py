import re

import numpy as np
import pytest

from sd_struct_rt.shapes import scorer, world


def test_the_scorer_reads_back_what_the_world_draws():
    rng = np.random.default_rng(2024)
    scenes = [world.sample_scene(rng, split="any") for _ in range(1000)]
    judgements = [scorer.score_image(world.caption(scene), world.render(scene)) for scene in scenes]
    exact = sum(judgement.exact for judgement in judgements)
    assert exact >= 990, [j for j in judgements if not j.exact][:5]


def test_detections_sit_where_the_shapes_are():
    scene = world.place([("blue", "circle"), ("yellow", "triangle")], np.random.default_rng(5))
    detections = scorer.detect(world.render(scene))
    for obj in scene.objects:
        (match,) = [d for d in detections if d.pair == obj.pair]
        assert abs(match.centroid[0] - obj.geometry.x) < 1.0
        assert abs(match.centroid[1] - obj.geometry.y) < obj.geometry.half_size / 2  # a triangle's mass sits low


def test_scenes_and_images_are_a_function_of_the_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [world.sample_scene(rng) for _ in range(20)]

    first, second = draw(11), draw(11)
    assert first == second
    assert all(np.array_equal(world.render(a), world.render(b)) for a, b in zip(first, second))
    assert first != draw(12)


def test_images_are_64_pixel_rgb_with_a_white_border():
    image = world.render(world.sample_scene(np.random.default_rng(0), object_count=2))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[0] == 255).all() and (image[-1] == 255).all()


def test_captions_follow_the_cc500_template():
    template = re.compile(r"a (\w+) (circle|square|triangle)( and a (\w+) (circle|square|triangle))?")
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = world.sample_scene(rng, split="any")
        text = world.caption(scene)
        match = template.fullmatch(text)
        assert match, text
        assert match.group(1) in world.COLOURS and (match.group(4) is None or match.group(4) in world.COLOURS)
        assert world.parse_caption(text) == list(scene.pairs)


def test_two_objects_differ_in_colour_and_shape_and_do_not_overlap():
    rng = np.random.default_rng(4)
    for _ in range(300):
        first, second = world.sample_scene(rng, object_count=2, split="any").objects
        assert first.colour != second.colour and first.shape != second.shape
        distance = max(abs(first.geometry.x - second.geometry.x), abs(first.geometry.y - second.geometry.y))
        assert distance >= first.geometry.half_size + second.geometry.half_size + world.GAP


def test_held_out_pairs_never_appear_in_two_object_training_captions():
    rng = np.random.default_rng(6)
    training = [world.sample_scene(rng, split="train") for _ in range(2000)]
    two_object_pairs = {pair for scene in training if len(scene.objects) == 2 for pair in scene.pairs}
    single_pairs = {pair for scene in training if len(scene.objects) == 1 for pair in scene.pairs}
    assert not two_object_pairs & world.HELD_OUT_PAIRS
    assert world.HELD_OUT_PAIRS <= single_pairs  # each held-out pair is still taught on its own
    for prompt in world.seen_two_object_prompts():
        assert not set(world.parse_caption(prompt)) & world.HELD_OUT_PAIRS


def test_held_out_prompts_are_many_and_each_holds_an_unseen_pair():
    prompts = world.held_out_two_object_prompts()
    assert len(set(prompts)) == len(prompts) >= 100
    assert not set(prompts) & set(world.seen_two_object_prompts())
    for prompt in prompts:
        pairs = world.parse_caption(prompt)
        assert len(pairs) == 2 and set(pairs) & world.HELD_OUT_PAIRS


def _objects(*pairs):
    return [scorer.Detection(colour, shape, (0.0, 0.0), 100) for colour, shape in pairs]


@pytest.mark.parametrize("detected, outcome", [
    ([("red", "circle"), ("blue", "square")], "exact"),
    ([("blue", "square"), ("red", "circle"), ("green", "triangle")], "extra_objects"),
    ([("blue", "circle"), ("red", "square")], "colour_swap"),
    ([("red", "circle")], "missing_object"),
    ([("red", "circle"), ("none", "square")], "wrong_attribute"),
    ([("red", "circle"), ("red", "square")], "colour_leak"),
    ([("blue", "circle"), ("blue", "square")], "colour_leak"),
    ([("red", "circle"), ("green", "square")], "wrong_attribute"),
    ([("red", "circle"), ("red", "circle")], "wrong_attribute"),
])
def test_judge_names_the_outcome(detected, outcome):
    judgement = scorer.judge("a red circle and a blue square", _objects(*detected))
    assert judgement.outcome == outcome
    assert judgement.all_pairs_present == (outcome in ("exact", "extra_objects"))


def test_judge_refuses_a_prompt_outside_the_world():
    with pytest.raises(ValueError, match="not a shapes caption"):
        scorer.judge("a red car and a white sheep", [])
