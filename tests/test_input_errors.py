"""InputError carries the parameter it is about, and the server names it by its HTTP field
without editing the message's text."""

from __future__ import annotations

import pickle

import pytest

from sd_struct_rt import inputs
from sd_struct_rt.contract import Profile
from sd_struct_rt.errors import InputError, UserError
from sd_struct_rt.schedulers import make_scheduler
from sd_struct_rt.structure.parsers import BracketedTreeParser


def test_a_message_led_by_its_parameter_renders_under_another_name():
    error = InputError("must be 0 or more (7.5 is SD's usual), not -1", parameter="guidance_scale")
    assert str(error) == "guidance_scale must be 0 or more (7.5 is SD's usual), not -1"
    assert error.parameter == "guidance_scale" and error.detail == "must be 0 or more (7.5 is SD's usual), not -1"
    assert error.named("guidance") == "guidance must be 0 or more (7.5 is SD's usual), not -1"
    assert isinstance(error, UserError) and isinstance(error, ValueError)


def test_a_message_worded_otherwise_keeps_its_text_and_its_parameter():
    error = InputError("field 'steps' must be a whole number, not \"ten\"", parameter="num_inference_steps",
                       leads=False)
    assert str(error) == error.named("steps") == "field 'steps' must be a whole number, not \"ten\""
    assert error.parameter == "num_inference_steps"
    plain = InputError("the body must be a JSON object")
    assert str(plain) == plain.named("anything") == "the body must be a JSON object" and plain.parameter is None


def test_the_text_of_the_message_is_never_edited():
    error = InputError("has 2000 characters about num_inference_steps", parameter="num_inference_steps")
    assert error.named("steps") == "steps has 2000 characters about num_inference_steps"


def test_an_input_error_survives_pickling_whole():
    error = pickle.loads(pickle.dumps(InputError("must be a number, not 'x'", parameter="seed")))
    assert str(error) == "seed must be a number, not 'x'" and error.parameter == "seed"
    assert error.named("the seed") == "the seed must be a number, not 'x'"


@pytest.mark.parametrize("check, parameter, message", [
    (lambda: inputs.steps(0), "num_inference_steps", "num_inference_steps must be between 1 and 1000, not 0"),
    (lambda: inputs.steps("6", "steps"), "steps", "steps must be a whole number, not '6'"),
    (lambda: inputs.guidance(-1), "guidance_scale", "guidance_scale must be 0 or more (7.5 is SD's usual), not -1"),
    (lambda: inputs.seed(-1), "seed", "seed must be between 0 and 2**63-1, not -1"),
    (lambda: inputs.image_side(130, "width"), "width", "width 130 is not a multiple of 8"),
    (lambda: inputs.text(7, "negative_prompt"), "negative_prompt", "negative_prompt must be a string, not int"),
    (lambda: make_scheduler("loud", None), "scheduler", "scheduler must be one of pndm, ddim,"),
    (lambda: Profile(levels=0), "levels", "levels must be between 1 and 64, not 0"),
    (lambda: Profile(batch=(2, 1)), "batch", "batch range 2:1 must have 1 <= MIN <= MAX <= 64"),
    (lambda: Profile(size=(64, 100)).require_size_step(16), "size", "size range 64:100 must be multiples of 16"),
    (lambda: Profile().check(1, 72, 64, 16, "x"), "width", "width 72 is not a multiple of 16"),
    (lambda: Profile().check(1, 1024, 64, 16, "x"), "width", "width 1024 is outside the engine's 64..512"),
    (lambda: Profile().check(9, 1024, 64, 16, "x"), None, "batch 9 is outside the engine's 1..4; width 1024"),
    (lambda: BracketedTreeParser(["(NP a"]), "trees", "unbalanced tree"),
    (lambda: BracketedTreeParser([], ["a dog"]).phrases("a cat"), "phrases", "phrase 'a dog' does not occur"),
])
def test_raise_sites_name_their_parameter(check, parameter, message):
    with pytest.raises(InputError) as raised:
        check()
    assert str(raised.value).startswith(message) and raised.value.parameter == parameter


def test_the_server_names_the_field_by_the_parameter():
    pytest.importorskip("ray.serve")
    from sd_struct_rt.serve.app import error_body, pipeline_arguments

    with pytest.raises(InputError) as raised:
        inputs.steps(0)
    assert error_body(raised.value) == {"error": "steps must be between 1 and 1000, not 0", "field": "steps"}
    with pytest.raises(InputError) as raised:
        inputs.text("a cat", "prompt", limit=3)
    assert error_body(raised.value)["field"] == "prompt"
    with pytest.raises(InputError) as raised:
        pipeline_arguments({"prompt": "a cat", "guidance": "high"})
    assert error_body(raised.value) == {"error": "field 'guidance' must be a whole number or a number, not \"high\"",
                                        "field": "guidance"}
    prompt = "draw num_inference_steps and guidance_scale"  # a user's text stays as written
    error = InputError(f"phrase 'x' does not occur as whole words in the prompt {prompt!r}", parameter="phrases",
                       leads=False)
    assert error_body(error) == {"error": str(error), "field": "phrases"}
    assert error_body(UserError("the latents stopped being finite")) == {"error": "the latents stopped being finite"}
