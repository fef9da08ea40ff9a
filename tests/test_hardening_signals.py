"""Signals against the real ``sdrt`` process: SIGTERM and Ctrl-C clean up; what SIGKILL strands, the
next run clears. Each test waits until the process is in the middle of writing, then signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hardening import PROMPT, SDRT, copy_vocabulary_into, leftovers, run_sdrt

BUILD = ["build-engine", "--backend", "onnxruntime", "--size", "64:64", "--levels", "2", "--quiet"]


def start(*arguments: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([SDRT, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"sdrt ended before the moment to signal it: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the moment to signal never came")
        time.sleep(0.05)


def staging_of(folder: Path):
    return lambda: any(".sdrt-" in path.name and "lock" not in path.name for path in folder.iterdir())


@pytest.mark.parametrize("signal_number, exit_code, word", [(signal.SIGTERM, 143, "terminated"),
                                                            (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_a_build_cleans_up(tmp_path, signal_number, exit_code, word):
    process = start(*BUILD, "--out", str(tmp_path / "set"))
    wait_for(staging_of(tmp_path), process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert f"sdrt: {word}" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no set, no staging, no lock file


def test_what_a_killed_build_leaves_the_next_build_clears(tmp_path, capsys):
    process = start(*BUILD, "--out", str(tmp_path / "set"))
    wait_for(staging_of(tmp_path), process)
    process.kill()
    process.wait()
    assert leftovers(tmp_path)  # SIGKILL gives no chance to clean up
    code, stderr = run_sdrt(capsys, *BUILD, "--out", str(tmp_path / "set"))
    assert code == 0, stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set"]


def test_a_signal_during_generation_writes_no_image(tmp_path):
    out = tmp_path / "x.png"
    process = start("generate", PROMPT, "--steps", "400", "--width", "64", "--height", "64", "--out", str(out))
    for line in process.stderr:  # the backend line comes once every input is checked, just before denoising
        if line.startswith("sdrt: backend"):
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_first_use_leaves_in_the_model_cache_the_next_run_clears(tmp_path):
    cache = tmp_path / "cache"
    copy_vocabulary_into(cache)
    env = {"SDRT_CACHE": str(cache)}
    process = start("parse", "a red car", env=env)
    wait_for(lambda: (cache / "models").is_dir() and staging_of(cache / "models")(), process)
    process.kill()
    process.wait()
    assert leftovers(cache)
    finished = subprocess.run([SDRT, "parse", "a red car and a white sheep", "--json"], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr
    assert not leftovers(cache) and len(list((cache / "models").iterdir())) == 1
