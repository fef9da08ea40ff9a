"""The OpenVINO backend: build, check-engine and generate on tiny, fp32 and bf16, and its refusals."""

from __future__ import annotations

import json
import sys

import pytest

from sd_struct_rt import StructuredDiffusionPipeline, UserError

from tests.conftest import psnr
from tests.hardening import one_error_line, run_sdrt

pytest.importorskip("openvino")
PROMPT = "a red car and a white sheep"
BUILD = ["build-engine", "--backend", "openvino", "--size", "64:128", "--batch", "1:2", "--levels", "4", "--quiet"]


def has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def openvino_set(tmp_path_factory):
    from sd_struct_rt.cli import main

    folder = tmp_path_factory.mktemp("openvino") / "tiny"
    assert main([*BUILD, "--out", str(folder)]) == 0
    return folder


def test_the_set_holds_ir_and_records_openvino_and_the_cpu(openvino_set):
    manifest = json.loads((openvino_set / "manifest.json").read_text())
    assert manifest["backend"] == "openvino" and manifest["precision"] == "fp32"
    assert manifest["engine_files"] == {name: f"{name}.xml" for name in ("text_encoder", "unet", "vae_decoder")}
    assert all(f"{name}.bin" in manifest["files"] for name in ("text_encoder", "unet", "vae_decoder"))
    import openvino

    assert manifest["backend_version"] == openvino.__version__ and manifest["device"]["name"]


def test_check_engine_passes_the_float32_gates(openvino_set, capsys):
    code, stderr = run_sdrt(capsys, "check-engine", str(openvino_set))
    assert code == 0, stderr


def test_openvino_and_torch_make_the_same_image(openvino_set, tmp_path, capsys):
    from sd_struct_rt.image import read_png_metadata

    common = ["--steps", "4", "--width", "64", "--height", "64", "--quiet", "--seed", "3", "--scheduler", "euler"]
    assert run_sdrt(capsys, "generate", PROMPT, "--engine", str(openvino_set), "--out", str(tmp_path / "o.png"),
                    *common)[0] == 0
    assert run_sdrt(capsys, "generate", PROMPT, "--out", str(tmp_path / "t.png"), *common)[0] == 0
    assert read_png_metadata(tmp_path / "o.png")["backend"] == "openvino-cpu"
    assert psnr(tmp_path / "o.png", tmp_path / "t.png") >= 35


@pytest.mark.skipif(not has_bf16(), reason="this CPU has no bf16 (AVX512-BF16 or AMX)")
def test_bf16_passes_its_own_gates(tmp_path, capsys):
    folder = tmp_path / "bf16"
    assert run_sdrt(capsys, *BUILD, "--precision", "bf16", "--out", str(folder))[0] == 0
    code, stderr = run_sdrt(capsys, "check-engine", str(folder))
    assert code == 0, stderr
    pipe = StructuredDiffusionPipeline.from_engines(folder)
    assert pipe.backend == "openvino-cpu-bf16" and pipe.networks.precision == "bf16"


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(tmp_path, capsys, monkeypatch):
    import openvino

    real = openvino.Core.get_property

    def without_bf16(self, device, name):
        value = real(self, device, name)
        return [capability for capability in value if capability != "BF16"] \
            if name == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(openvino.Core, "get_property", without_bf16)
    one_error_line(*run_sdrt(capsys, *BUILD, "--precision", "bf16", "--out", str(tmp_path / "set")),
                   "has no bf16 support")
    assert list(tmp_path.iterdir()) == []


def test_precisions_openvino_does_not_build_are_one_line(tmp_path, capsys):
    one_error_line(*run_sdrt(capsys, *BUILD, "--precision", "fp16", "--out", str(tmp_path / "set")),
                   "OpenVINO engines take precision fp32 or bf16, not fp16")


def test_missing_openvino_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails, find_spec finds nothing
    one_error_line(*run_sdrt(capsys, *BUILD, "--out", str(tmp_path / "set")), "OpenVINO is not installed",
                   "sd-struct-rt[openvino]")
    with pytest.raises(UserError, match="OpenVINO is not installed"):
        from sd_struct_rt.backends.openvino_backend import require_openvino

        require_openvino()
