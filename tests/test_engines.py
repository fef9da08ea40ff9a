"""Engine sets end to end on ONNX Runtime (CPU): build, check, generate, and every refusal."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sd_struct_rt.cli import main
from sd_struct_rt.image import read_png_metadata

from tests.conftest import psnr

pytest.importorskip("onnxruntime")
FAST = ["--steps", "3", "--width", "64", "--height", "64", "--quiet", "--seed", "9"]
PROMPT = "a red car and a white sheep"


@pytest.fixture
def engines(tiny_engines):
    return tiny_engines


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdrt: error")]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_build_writes_three_graphs_and_a_manifest(engines):
    manifest = json.loads((engines / "manifest.json").read_text())
    assert set(manifest["engine_files"]) == {"text_encoder", "unet", "vae_decoder"}
    assert all((engines / name).is_file() for name in manifest["files"])
    assert manifest["profile"] == {"batch": [1, 2], "size": [64, 128], "levels": 4}
    assert manifest["mode"] == "values" and manifest["backend"] == "onnxruntime"
    assert manifest["exporter"] and manifest["opset"] >= 17 and manifest["weights_sha256"]
    assert not [p for p in engines.parent.iterdir() if p.name.endswith(".building")]


def test_check_engine_passes(engines, capsys):
    assert main(["check-engine", str(engines)]) == 0
    assert "all 7 comparisons pass" in capsys.readouterr().out


def test_engines_and_torch_make_the_same_image(engines, tmp_path):
    assert main(["generate", PROMPT, "--engine", str(engines), "--out", str(tmp_path / "e.png"), *FAST]) == 0
    assert main(["generate", PROMPT, "--backend", "torch", "--out", str(tmp_path / "t.png"), *FAST]) == 0
    assert read_png_metadata(tmp_path / "e.png")["backend"] == "onnxruntime-cpu"
    assert psnr(tmp_path / "e.png", tmp_path / "t.png") >= 35


def test_mixed_batch_on_engines_equals_one_by_one(engines, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car and a white sheep\ncats\n")
    for name, size in (("batched", "2"), ("alone", "1")):
        (tmp_path / name).mkdir()
        assert main(["generate", "--prompts-file", str(prompts), "--engine", str(engines), "--batch-size", size,
                     "--out-dir", str(tmp_path / name), *FAST]) == 0
    for batched, alone in zip(sorted((tmp_path / "batched").iterdir()), sorted((tmp_path / "alone").iterdir())):
        assert psnr(batched, alone) >= 45


def copy_of(engines, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(engines, target)
    return target


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_engine_is_refused_and_no_image_written(engines, tmp_path, capsys, damage):
    folder = copy_of(engines, tmp_path)
    victim = folder / "unet.onnx.data" if damage == "corrupt" else folder / "unet.onnx"
    data = bytearray(victim.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    victim.write_bytes(bytes(data))
    out = tmp_path / "img.png"
    assert main(["generate", PROMPT, "--engine", str(folder), "--out", str(out), *FAST]) == 2
    assert "corrupt or was changed" in one_error_line(capsys) and not out.exists()
    assert main(["check-engine", str(folder)]) == 2
    assert "rebuild with: sdrt build-engine" in one_error_line(capsys)


def test_engines_of_another_mode_or_model_are_refused(engines, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", PROMPT, "--engine", str(engines), "--mode", "keys", "--out", str(out), *FAST]) == 2
    assert "mode is 'values', not 'keys'" in one_error_line(capsys)
    assert main(["generate", PROMPT, "--engine", str(engines), "--model", str(tmp_path), "--out", str(out),
                 *FAST]) == 2
    assert "model_id is 'tiny'" in one_error_line(capsys)
    folder = copy_of(engines, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights_sha256"] = "0" * 64  # as if built from other weights
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["check-engine", str(folder)]) == 2
    assert "weights of model 'tiny' differ" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("arguments, expected", [
    (["--width", "192"], "width 192 is outside the engine's 64..128"),
    (["--width", "96"], "not a multiple of 64"),
])
def test_requests_outside_the_profile_are_refused_before_running(engines, tmp_path, capsys, arguments, expected):
    out = tmp_path / "img.png"
    assert main(["generate", PROMPT, "--engine", str(engines), "--out", str(out), "--steps", "2",
                 "--quiet", *arguments]) == 2
    assert expected in one_error_line(capsys)
    assert not out.exists()


def test_batch_larger_than_the_profile(engines, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    (tmp_path / "out").mkdir()
    assert main(["generate", "--prompts-file", str(prompts), "--engine", str(engines), "--batch-size", "3",
                 "--out-dir", str(tmp_path / "out"), *FAST]) == 2
    assert "batch 3 is outside the engine's 1..2" in one_error_line(capsys)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_engine_folder(tmp_path, capsys):
    assert main(["generate", PROMPT, "--engine", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in one_error_line(capsys)


def test_tensorrt_missing_is_one_line(tmp_path, capsys):
    out = tmp_path / "trt"
    assert main(["build-engine", "--backend", "tensorrt", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "TensorRT" in line and "NVIDIA GPU" in line
    assert list(tmp_path.iterdir()) == []


def test_interrupted_build_leaves_nothing(tmp_path, capsys, monkeypatch):
    import sd_struct_rt.export.onnx_export as onnx_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_network", interrupted)
    out = tmp_path / "set"
    assert main(["build-engine", "--backend", "onnxruntime", "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no staging, no lock file


def test_second_build_into_the_same_folder_is_refused(tmp_path, capsys):
    from sd_struct_rt.export.build import folder_lock

    out = tmp_path / "set"
    with folder_lock(out):  # a first build holds the folder
        assert main(["build-engine", "--backend", "onnxruntime", "--out", str(out)]) == 2
    assert "another build is writing" in one_error_line(capsys)
    assert not out.exists()


def test_rebuild_replaces_an_engine_set_but_not_other_folders(engines, tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not ours")
    assert main(["build-engine", "--backend", "onnxruntime", "--out", str(other)]) == 2
    assert "is not an engine set" in one_error_line(capsys)
    assert (other / "holiday.jpg").read_bytes() == b"not ours"


def test_a_short_last_batch_is_checked_too(tmp_path, capsys):
    folder = tmp_path / "pairs"
    assert main(["build-engine", "--backend", "onnxruntime", "--batch", "2:2", "--size", "64:64",
                 "--levels", "2", "--out", str(folder)]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")  # batches of 2, then 1
    (tmp_path / "out").mkdir()
    assert main(["generate", "--prompts-file", str(prompts), "--engine", str(folder), "--batch-size", "2",
                 "--out-dir", str(tmp_path / "out"), *FAST]) == 2
    assert "batch 1 is outside the engine's 2..2" in one_error_line(capsys)
    assert list((tmp_path / "out").iterdir()) == []


def test_cuda_graphs_on_onnxruntime_engines_is_one_line(engines, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", PROMPT, "--engine", str(engines), "--cuda-graphs", "--out", str(out), *FAST]) == 2
    assert "CUDA graphs are a TensorRT option" in one_error_line(capsys) and not out.exists()


def test_a_graph_whose_cross_attention_would_not_fuse_is_refused(tmp_path, capsys, monkeypatch):
    from sd_struct_rt.export import graph_checks

    def unfusable(graph, expected=None):
        raise graph_checks.GraphCheckError("cross-attention TensorRT cannot fuse: attn2 output feeds Mul")

    monkeypatch.setattr(graph_checks, "check_fusable_cross_attention", unfusable)
    out = tmp_path / "set"
    assert main(["build-engine", "--backend", "onnxruntime", "--size", "64:64", "--quiet", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "fail a check" in line and "cannot fuse" in line
    assert list(tmp_path.iterdir()) == []  # no staging, no lock file


def test_build_runs_the_fusable_attention_check_on_every_cross_attention(tmp_path, monkeypatch):
    from sd_struct_rt.export import graph_checks

    counted = []
    real = graph_checks.check_fusable_cross_attention
    monkeypatch.setattr(graph_checks, "check_fusable_cross_attention",
                        lambda graph, expected=None: counted.append(real(graph, expected)) or counted[-1])
    assert main(["build-engine", "--backend", "onnxruntime", "--mode", "keys", "--size", "64:64", "--quiet",
                 "--out", str(tmp_path / "keys")]) == 0
    assert counted == [16]


def test_check_engine_reports_polygraphys_verdict(engines):
    """A network that is a little off fails SPEC 7's gate, and Polygraphy's verdict says so."""
    from sd_struct_rt import StructuredDiffusionPipeline
    from sd_struct_rt.engine_check import compare_networks

    reference = StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu").networks.vae_decoder
    engine_pipe = StructuredDiffusionPipeline.from_engines(engines)
    engine, profile = engine_pipe.networks.vae_decoder, engine_pipe.engine_set.manifest.profile

    class Perturbed:
        contract = engine.contract

        def __call__(self, **inputs):
            return {name: value * 1.001 for name, value in engine(**inputs).items()}

    generator = torch.Generator().manual_seed(0)
    rows, passed = compare_networks(reference, engine, profile, "fp32", generator)
    assert passed and all(row.passed for row in rows) and len(rows) == 2
    assert rows[1].shape == "batch=2 height=16 width=16"  # the profile's largest call was checked
    rows, passed = compare_networks(reference, Perturbed(), profile, "fp32", generator)
    assert not passed and not any(row.passed for row in rows)
    assert all(0.5e-3 < row.relative_error < 2e-3 for row in rows)
    rows, passed = compare_networks(reference, Perturbed(), profile, "fp16", generator)
    assert passed  # reduced precision is judged by cosine, which a uniform scale keeps at 1
