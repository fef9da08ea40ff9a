import os
import subprocess
import sys

import pytest

from sd_struct_rt.cli import main
from sd_struct_rt.image import read_png_metadata

FAST = ["--steps", "2", "--width", "64", "--height", "64", "--quiet"]
PROMPT = "a red car and a white sheep"


def generate(out, *extra):
    return main(["generate", PROMPT, "--out", str(out), *FAST, *extra])


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    assert generate(tmp_path / "a.png", "--seed", "3") == 0
    assert generate(tmp_path / "b.png", "--seed", "3") == 0
    assert generate(tmp_path / "c.png", "--seed", "4") == 0
    a, b, c = ((tmp_path / name).read_bytes() for name in ("a.png", "b.png", "c.png"))
    assert a == b
    assert a != c


def test_png_records_how_it_was_made(tmp_path):
    out = tmp_path / "meta.png"
    assert generate(out, "--seed", "11", "--negative-prompt", "blurry", "--guidance", "5") == 0
    meta = read_png_metadata(out)
    assert meta["prompt"] == PROMPT
    assert meta["negative_prompt"] == "blurry"
    assert meta["seed"] == "11"
    assert meta["steps"] == "2"
    assert meta["guidance"] == "5.0"
    assert meta["scheduler"] == "pndm"
    assert meta["size"] == "64x64"
    assert meta["model"] == "tiny"
    assert meta["backend"] == "torch-cpu"
    assert meta["sd_struct_rt_version"]
    assert list(tmp_path.iterdir()) == [out]  # no temporary left beside it


def _nothing_written(folder):
    return [p for p in folder.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("arguments, expected", [
    (["--width", "100"], "not a multiple of 8"),
    (["--height", "4096"], "between 64 and 2048"),
    (["--steps", "0"], "steps must be between 1 and 1000"),
    (["--guidance", "-1"], "guidance must be 0 or more"),
    (["--model", "{tmp}/no-such-model"], "does not exist"),
    (["--model", "{tmp}"], "is not a Stable Diffusion model"),
    (["--out", "{tmp}/missing/out.png"], "does not exist"),
    (["--out", "{tmp}/out.jpg"], "must end in .png"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, arguments, expected):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    out = ["--out", str(tmp_path / "out.png")] if "--out" not in arguments else []
    with pytest.raises(SystemExit) as exit_info:  # argparse-level errors exit directly
        raise SystemExit(main(["generate", PROMPT, *FAST, *out, *arguments]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert _nothing_written(tmp_path)


def test_read_only_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/sdrt-test.png"  # root writes through mode bits; /proc refuses everyone
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = str(locked / "out.png")
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["generate", PROMPT, *FAST, "--out", target]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to output folder" in err[0]
    assert not os.path.exists(target)


def test_console_script_help_and_error_without_traceback(tmp_path):
    sdrt = os.path.join(os.path.dirname(sys.executable), "sdrt")
    helped = subprocess.run([sdrt, "generate", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "example:" in helped.stdout
    failed = subprocess.run([sdrt, "generate", PROMPT, "--model", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().count("\n") == 0


def test_png_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert generate(tmp_path / "mode.png") == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "mode.png").stat().st_mode & 0o777 == 0o644
