import json

import pytest

from sd_struct_rt.cli import main

pytest.importorskip("onnxruntime")


def test_bench_json_reports_every_ratio_and_stage(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--backend", "onnxruntime", "--json", "--rounds", "2",
                 "--steps", "1", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert set(result["ratios"]) == {"structured_over_plain", "keys_over_plain",
                                     "onnxruntime_speedup_over_torch", "naive_torch_over_structured"}
    assert all(value > 0 for value in result["ratios"].values())
    assert set(result["stages"]) == {"parse", "text_encode", "unet_step", "vae", "end_to_end"}
    assert [row["batch"] for row in result["throughput"]] == [1, 2, 4]
    assert result["backend"] == "onnxruntime-cpu" and result["machine"]["cpus"] >= 1
    assert all(timing["runs"] == 2 for timing in result["unet_call"].values())
