"""The shapes training recipe reproduces: same arguments, same bits; a cut-short run never passes as its own."""

import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.training import TRAIN_FOLDER, run_recipe, weights_and_configs

TRAIN_SCRIPT = TRAIN_FOLDER / "train_shapes.py"
SHORT_RECIPE = ["--scenes", "64", "--vae-steps", "3", "--unet-steps", "3", "--threads", "2"]


def train(out: Path, *arguments: str):
    return run_recipe("train_shapes.py", out, *arguments)


def load_training_module():
    spec = importlib.util.spec_from_file_location("train_shapes", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rates_follow_the_step_alone_whatever_the_clock_says(monkeypatch):
    training = load_training_module()
    phase = training.Phase("unet", max_steps=1000, peak_lr=1e-3, deadline=math.inf)
    # Two hours on: a schedule that read the clock would have annealed to its floor by now.
    monkeypatch.setattr(training.time, "monotonic", lambda: phase.start + 7200.0)
    expected = {0: 1e-3 / training.WARMUP_STEPS, 500: 1e-3 * 0.55,
                999: 1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.999)))}
    for step, rate in expected.items():
        phase.step = step
        assert math.isclose(phase.learning_rate, rate, rel_tol=1e-12), step


def test_two_runs_of_one_recipe_write_bit_identical_folders(tmp_path):
    first, second = train(tmp_path / "a", *SHORT_RECIPE), train(tmp_path / "b", *SHORT_RECIPE)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    files = weights_and_configs(tmp_path / "a")
    assert {name for name in files if name.endswith(".safetensors")} == {
        "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"}
    assert files == weights_and_configs(tmp_path / "b")
    # A different seed must change the weights, or the comparison above proves nothing.
    third = train(tmp_path / "c", *SHORT_RECIPE, "--seed", "1")
    assert third.returncode == 0, third.stderr[-2000:]
    assert weights_and_configs(tmp_path / "c")["unet/diffusion_pytorch_model.safetensors"] != \
        files["unet/diffusion_pytorch_model.safetensors"]
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert log["phases"]["unet"] == {**log["phases"]["unet"], "steps": 3, "reached_cap": True}


def test_a_budget_too_short_for_the_steps_warns_and_says_so_in_the_log(tmp_path):
    result = train(tmp_path / "short", *SHORT_RECIPE, "--minutes-budget", "0.01")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "will not reproduce" in result.stderr
    phases = json.loads((tmp_path / "short" / "training_log.json").read_text())["phases"]
    assert phases["unet"]["reached_cap"] is False and phases["unet"]["steps"] < 3


def test_an_existing_out_folder_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = train(tmp_path / "mine", *SHORT_RECIPE)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("already exists; give a new folder")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_sigterm_mid_training_leaves_neither_the_folder_nor_its_staging(tmp_path):
    out = tmp_path / "model"
    process = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), "--out", str(out), "--scenes", "64",
                                "--vae-steps", "100000", "--unet-steps", "3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # The VAE phase has begun once the staging folder exists and the scenes are drawn.
        while not list(tmp_path.glob(".model.*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".model.*")), "no staging folder appeared"
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"train_shapes: terminated; nothing was written to {out}"
    assert list(tmp_path.iterdir()) == []
