"""A model folder's own guidance scale and steps, used wherever a caller gives none."""

import json
import shutil

import pytest

from tests.hardening import one_error_line, run_sdrt
from sd_struct_rt import StructuredDiffusionPipeline, UserError
from sd_struct_rt.cli import main
from sd_struct_rt.model import DRAWING_DEFAULTS_NAME, resolve_model_folder
from sd_struct_rt.shapes import MODELS


@pytest.fixture(scope="module")
def tiny_with_defaults(tmp_path_factory):
    """tiny's folder, recording guidance 2.5 and 3 steps."""
    folder = tmp_path_factory.mktemp("models") / "tiny-defaults"
    shutil.copytree(resolve_model_folder("tiny"), folder)
    (folder / DRAWING_DEFAULTS_NAME).write_text(json.dumps({"guidance_scale": 2.5, "num_inference_steps": 3}))
    return folder


def test_the_shapes_models_record_what_they_draw_best_at():
    for name in MODELS:
        pipe = StructuredDiffusionPipeline.from_pretrained(name)
        assert pipe.drawing_defaults == {"num_inference_steps": 30, "guidance_scale": 3.0}


def test_a_folder_without_the_file_keeps_sds_usual_defaults():
    pipe = StructuredDiffusionPipeline.from_pretrained("tiny")
    assert pipe.drawing_defaults == {"num_inference_steps": 50, "guidance_scale": 7.5}


def test_the_folders_defaults_apply_only_when_the_caller_gives_none(tiny_with_defaults):
    pipe = StructuredDiffusionPipeline.from_pretrained(str(tiny_with_defaults))
    request = pipe.check_inputs("a red car")
    assert (request.steps, request.guidance_scale) == (3, 2.5)
    request = pipe.check_inputs("a red car", num_inference_steps=5, guidance_scale=0.0)
    assert (request.steps, request.guidance_scale) == (5, 0.0)
    metadata = pipe("a red car", width=64, height=64).metadata[0]
    assert (metadata["steps"], metadata["guidance"]) == ("3", "2.5")


def test_an_engine_set_carries_its_models_defaults(tiny_with_defaults, tmp_path):
    out = tmp_path / "set"
    assert main(["build-engine", "--model", str(tiny_with_defaults), "--backend", "onnxruntime", "--batch", "1:1",
                 "--size", "64:64", "--levels", "2", "--quiet", "--out", str(out)]) == 0
    engines = StructuredDiffusionPipeline.from_engines(out)
    assert engines.drawing_defaults == {"num_inference_steps": 3, "guidance_scale": 2.5}
    image = tmp_path / "x.png"
    assert main(["generate", "a red car", "--engine", str(out), "--out", str(image), "--quiet"]) == 0
    from PIL import Image

    with Image.open(image) as picture:
        assert (picture.text["steps"], picture.text["guidance"]) == ("3", "2.5")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model_facts"]["default_steps"] = 0  # a hand-edited set is refused, not run with 0 steps
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="model_facts.default_steps must be between 1 and 1000, not 0"):
        StructuredDiffusionPipeline.from_engines(out)


@pytest.mark.parametrize("content, reason", [
    ("{", "JSONDecodeError"),
    ('{"guidance_scale": "high"}', "guidance_scale must be a number"),
    ('{"num_inference_steps": 0}', "num_inference_steps must be between 1"),
    ('{"steps": 30}', "must be a JSON object with guidance_scale"),
    ("[3]", "must be a JSON object with guidance_scale"),
])
def test_a_damaged_defaults_file_is_one_line_naming_it(tiny_with_defaults, tmp_path, capsys, content, reason):
    folder = tmp_path / "model"
    shutil.copytree(tiny_with_defaults, folder)
    (folder / DRAWING_DEFAULTS_NAME).write_text(content)
    with pytest.raises(UserError, match=f"{DRAWING_DEFAULTS_NAME}: unreadable drawing defaults .*{reason}"):
        StructuredDiffusionPipeline.from_pretrained(str(folder))
    code, stderr = run_sdrt(capsys, "generate", "a cat", "--model", str(folder), "--out", str(tmp_path / "x.png"))
    one_error_line(code, stderr, "unreadable drawing defaults")
    assert not (tmp_path / "x.png").exists()


def test_help_names_the_embedded_models_defaults(capsys):
    for command in ("generate", "eval", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "the model folder's own (shapes: 30" in text and "(shapes: 3" in text and "else 7.5" in text, command
