"""Prompts, trees, numbers and folders as an adversary would give them; metadata that tells the
truth; advice that works when followed; newcomer friction."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from sd_struct_rt import InputError, StructuredDiffusionPipeline
from sd_struct_rt.image import read_png_metadata

from tests.hardening import FAST, PROMPT, leftovers, one_error_line, run_sdrt, sdrt_output, subprocess_sdrt


@pytest.fixture(scope="module")
def pipe():
    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


# --- prompts and trees --------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("a red \ud800 car", "invalid character at position 6 (a lone surrogate, U+D800)"),
    ("x" * 100_000, "has 100000 characters, more than the 1000 taken"),
    ("a" * 1001, "has 1001 characters"),
    ("\x00\x01", "is empty"),
    ("   \t  ", "is empty"),
])
def test_prompts_refused_in_one_line(tmp_path, capsys, prompt, expected):
    out = tmp_path / "x.png"
    one_error_line(*run_sdrt(capsys, "generate", prompt, "--out", str(out), *FAST), expected)
    one_error_line(*run_sdrt(capsys, "parse", prompt), expected)
    assert not out.exists()


@pytest.mark.parametrize("prompt", ["a red\x00 car and a white\x07 sheep", "a red car\x1b[31m and a white sheep",
                                    "a red car\u200b and a white sheep", "ein rotes Auto und ein weißes Schaf",
                                    "赤い車と白い羊", "a red car 🚗 and a white sheep 🐑",
                                    "it's a \"red\" car (really)"])
def test_odd_but_valid_prompts_run(tmp_path, capsys, prompt):
    out = tmp_path / "x.png"
    code, stderr = run_sdrt(capsys, "generate", prompt, "--out", str(out), *FAST)
    assert code == 0 and "Traceback" not in stderr, stderr
    control = sum(character < " " for character in prompt)
    phrases = json.loads(read_png_metadata(out)["phrases"])
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == (1 if control else 0) + (0 if phrases else 1), stderr  # + "no phrase: plain"
    assert "\x00" not in read_png_metadata(out)["prompt"]


def test_invalid_utf8_in_argv_is_one_line(tmp_path):
    result = subprocess_sdrt("parse", "a red car \udcff")  # what Python makes of a 0xff byte in argv
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lone surrogate" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("content, expected", [
    ("\ufeffa red car\na cat\n".encode(), None),
    (b"a red car\xff\n", "is not UTF-8 text (byte 9)"),
    (b"a red car\x00 on a hill\n", None),
    (("x" * 5000 + "\n").encode(), "line 1 has 5000 characters"),
    (b"\n", "line 1 is empty"),
    (b"", "is empty; write one prompt per line"),
])
def test_prompts_files_as_found_in_the_wild(tmp_path, capsys, content, expected):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    code, stdout, stderr = sdrt_output(capsys, "parse", "--prompts-file", str(prompts), "--json")
    if expected is None:
        assert code == 0 and "Traceback" not in stderr, stderr
        assert len([line for line in stderr.splitlines() if "warning" in line]) == 1  # BOM or control character
        assert json.loads(stdout.splitlines()[0])["prompt"].startswith("a red car")
    else:
        one_error_line(code, stderr, expected)


def test_a_tree_nested_beyond_the_recursion_limit(capsys):
    depth = sys.getrecursionlimit() * 5
    tree = "(ROOT " * depth + "(NP (DT a) (NN cat))" + ")" * depth
    code, stdout, stderr = sdrt_output(capsys, "parse", "a cat", "--tree", tree, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["phrases"] == []  # the NP is the whole prompt


def test_a_huge_flat_tree_is_fast_and_fine(capsys):
    words = ["cat"] * 300
    tree = "(ROOT (NP " + " ".join(f"(NN {word})" for word in words) + "))"
    one_error_line(*run_sdrt(capsys, "parse", " ".join(words[:10]), "--tree", tree), "does not match the prompt")


@pytest.mark.parametrize("tree, expected", [
    ("(ROOT (NP (DT a) (NN cat)))) )", "unbalanced tree"),
    (") (ROOT (NP (DT a) (NN cat)))", "a tree starts with '('"),
    ("(", "every '(' must be followed by a label"),
    ("((", "every '(' must be followed by a label"),
    ("cat", "a tree starts with '('"),
    ("(ROOT (NP))", "has no word below it"),
    ("(ROOT (NP (DT a) (NN cat))) (ROOT x)", "text after the tree's last ')'"),
])
def test_malformed_trees_are_one_line(capsys, tree, expected):
    one_error_line(*run_sdrt(capsys, "parse", "a cat", "--tree", tree), expected)


def test_dropped_phrases_are_one_warning_line(tmp_path, capsys):
    prompt = "a red car on a hill, " * 12 + "a blue bird on a green branch and a yellow dog on a mat"
    code, stdout, stderr = sdrt_output(capsys, "parse", prompt)
    assert code == 0 and "dropped:" in stdout and "warning" not in stderr  # the table says it
    code, _, stderr = sdrt_output(capsys, "generate", prompt, "--out", str(tmp_path / "long.png"), *FAST)
    assert code == 0
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    # past the 75 tokens and beyond the 8 levels: both reasons, one line
    assert len(warnings) == 1 and "left out" in warnings[0] and "the text encoder reads" in warnings[0] \
        and "fit in 8 levels" in warnings[0], stderr


# --- numbers the CLI accepts must work ----------------------------------------------------------

@pytest.mark.parametrize("arguments", [
    ["--steps", "1"], ["--guidance", "0"], ["--guidance", "30"], ["--seed", str(2**63 - 1)],
    ["--width", "64", "--height", "2048"], ["--max-levels", "1"], ["--max-levels", "64"], ["--mode", "keys"],
])
def test_values_at_the_edges_of_the_accepted_ranges_run(tmp_path, capsys, arguments):
    out = tmp_path / "x.png"
    code, stderr = run_sdrt(capsys, "generate", PROMPT, "--out", str(out), *FAST, "--steps", "1", *arguments)
    assert code == 0, stderr
    assert out.is_file()


def test_the_most_steps_the_scheduler_takes_is_checked_not_crashed_on(pipe, tmp_path, capsys):
    assert pipe.check_inputs(PROMPT, num_inference_steps=999).steps == 999
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--steps", "1000", "--out", str(tmp_path / "x.png")),
                   "num_inference_steps 1000 is more than pndm with this model can take; use at most 999")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("guidance", ["1e30", "3e38"])
def test_non_finite_latents_name_the_step_and_write_nothing(tmp_path, capsys, guidance):
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--guidance", guidance, "--out", str(tmp_path / "x.png"),
                             *FAST), "stopped being finite at step", "no image")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("arguments, expected", [
    (["--steps", "-1"], "steps must be between 1 and 1000"),
    (["--steps", "2.5"], "steps must be a whole number"),
    (["--guidance", "inf"], "guidance must be 0 or more"),
    (["--guidance", "nan"], "guidance must be 0 or more"),
    (["--seed", str(2**63)], "seed must be between 0 and 2**63-1"),
    (["--width", "2056"], "width must be between 64 and 2048"),
    (["--width", "0"], "width must be between 64 and 2048"),
    (["--max-levels", "65"], "max-levels must be between 1 and 64"),
    (["--batch-size", "0"], "batch-size must be between 1 and 64"),
])
def test_values_outside_the_ranges_are_one_line(tmp_path, capsys, arguments, expected):
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(tmp_path / "x.png"), *arguments), expected)


@pytest.mark.parametrize("arguments, expected", [
    (["--batch", "0:4"], "batch range 0:4"),
    (["--batch", "1:100"], "batch range 1:100"),
    (["--size", "64:4096"], "size range 64:4096"),
    (["--size", "256:128"], "size range 256:128"),
    (["--size", "64:100"], "multiples of 64; try 64:128"),
    (["--levels", "0"], "levels must be between 1 and 64"),
    (["--batch", "x:y"], "--batch must be MIN:MAX whole numbers"),
])
def test_impossible_profiles_are_refused_before_any_work(tmp_path, capsys, arguments, expected):
    one_error_line(*run_sdrt(capsys, "build-engine", "--backend", "onnxruntime", "--quiet",
                             "--out", str(tmp_path / "set"), *arguments), expected)
    assert not list(tmp_path.iterdir())


# --- folders that are not SD 1.x pipelines ------------------------------------------------------

@pytest.mark.parametrize("index, expected", [
    ({"_class_name": "StableDiffusionControlNetPipeline"}, "'StableDiffusionControlNetPipeline' model"),
    ({"_class_name": "StableDiffusionInpaintPipeline"}, "'StableDiffusionInpaintPipeline' model"),
    ({"_class_name": "StableDiffusionXLImg2ImgPipeline"}, "'StableDiffusionXLImg2ImgPipeline' model"),
    ("not json", "model_index.json is unreadable"),
    ([1, 2], "is not a JSON object"),
])
def test_folders_of_other_pipelines_are_refused_by_name(tmp_path, capsys, index, expected):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    for command in (["generate", PROMPT, "--out", str(tmp_path / "x.png")], ["parse", PROMPT],
                    ["build-engine", "--backend", "onnxruntime", "--out", str(tmp_path / "set")]):
        one_error_line(*run_sdrt(capsys, *command, "--model", str(tmp_path / "model")), expected)


# --- metadata that tells the truth -------------------------------------------------------------

def test_the_png_records_levels_used_and_dropped(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert run_sdrt(capsys, "generate", "a red car and a white sheep on a green hill", "--max-levels", "2",
                    "--out", str(out), *FAST)[0] == 0
    meta = read_png_metadata(out)
    assert meta["max_levels"] == "2"
    assert [phrase["text"] for phrase in json.loads(meta["phrases"])] == ["a red car"]
    assert json.loads(meta["dropped_phrases"]) == ["a white sheep on a green hill", "a white sheep", "a green hill"]
    assert meta["precision"] == "fp32" and meta["backend_version"].startswith("2.")
    assert "engine_set" not in meta


def test_an_engine_image_records_its_set(tiny_engines, tmp_path, capsys):
    from sd_struct_rt.manifest import read_manifest

    out = tmp_path / "x.png"
    assert run_sdrt(capsys, "generate", PROMPT, "--engine", str(tiny_engines), "--out", str(out), *FAST)[0] == 0
    meta = read_png_metadata(out)
    manifest = read_manifest(tiny_engines)
    assert meta["engine_set"] == manifest.digest() and meta["precision"] == manifest.precision
    assert meta["backend_version"] == manifest.backend_version and meta["max_levels"] == "4"


# --- advice that works when followed -----------------------------------------------------------

def test_a_mode_mismatch_suggests_a_set_beside_the_working_one(tiny_engines, tmp_path, capsys):
    import shutil

    working = tmp_path / "tiny"
    shutil.copytree(tiny_engines, working)
    message = one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--engine", str(working), "--mode", "keys",
                                       "--out", str(tmp_path / "x.png"), *FAST), "mode is 'values', not 'keys'")
    command = shlex.split(message.split("build one beside it with: ", 1)[1])
    assert command[-1] == str(tmp_path / "tiny-keys") and "--mode" in command
    assert run_sdrt(capsys, *command[1:], "--quiet")[0] == 0
    assert run_sdrt(capsys, "generate", PROMPT, "--engine", command[-1], "--mode", "keys",
                    "--out", str(tmp_path / "x.png"), *FAST)[0] == 0
    assert run_sdrt(capsys, "check-engine", str(working))[0] == 0  # the working set is untouched


def test_a_size_no_engine_takes_names_sizes_not_a_rebuild(tiny_engines, tmp_path, capsys):
    message = one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--engine", str(tiny_engines),
                                       "--out", str(tmp_path / "x.png"), *FAST, "--width", "96"), "use 64 or 128")
    assert "rebuild" not in message


def test_a_size_outside_the_profile_gives_a_rebuild_that_works(tiny_engines, tmp_path, capsys):
    import shutil

    working = tmp_path / "tiny"
    shutil.copytree(tiny_engines, working)
    arguments = ["generate", PROMPT, "--engine", str(working), "--width", "192", "--out", str(tmp_path / "x.png"),
                 "--steps", "1", "--quiet"]
    message = one_error_line(*run_sdrt(capsys, *arguments), "rebuild with: ")
    command = shlex.split(message.split("rebuild with: ", 1)[1])
    # The old range, widened just enough for width 192.
    assert "--size" in command and command[command.index("--size") + 1] == "64:192"
    assert run_sdrt(capsys, *command[1:], "--quiet")[0] == 0
    assert run_sdrt(capsys, *arguments)[0] == 0


# --- newcomer friction -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["generate", "build-engine", "bench"])
def test_every_long_command_has_quiet_and_progress(capsys, command):
    code, text, _ = sdrt_output(capsys, command, "--help")
    assert code == 0 and "--quiet" in text and "--progress" in text


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    result = subprocess_sdrt("generate", PROMPT, "--steps", "3", "--width", "64", "--height", "64",
                             "--out", str(tmp_path / "x.png"))
    assert result.returncode == 0 and "denoising" not in result.stderr
    assert result.stderr.strip().splitlines() == ["sdrt: backend torch-cpu"]


def test_the_denoising_progress_counts_the_steps_asked_for(pipe):
    for steps in (1, 2, 3, 10):
        seen = []
        pipe(PROMPT, num_inference_steps=steps, width=64, height=64, progress=lambda done, total: seen.append(
            (done, total)))
        assert seen == [(done, steps) for done in range(1, steps + 1)]  # PNDM runs steps + 1 timesteps


@pytest.mark.parametrize("arguments, expected", [
    (["generate", "  .  "], "the prompt is empty"),
    (["generate", PROMPT, "--out", "{tmp}/folder.png"], "is a folder"),
    (["bench", "--out", "{tmp}/folder.png"], "is a folder"),
    (["generate", PROMPT, "--out", "{tmp}/missing/x.png"], "does not exist"),
])
def test_cheap_checks_come_before_any_model_loads(tmp_path, capsys, monkeypatch, arguments, expected):
    import sd_struct_rt.model as model

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before a cheap check")

    monkeypatch.setattr(model, "load_model", no_loading)
    monkeypatch.setattr(model, "resolve_model_folder", no_loading)
    (tmp_path / "folder.png").mkdir()
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    one_error_line(*run_sdrt(capsys, *arguments), expected)


def test_parse_explains_why_a_prompt_has_no_levels(capsys):
    code, stdout, _ = sdrt_output(capsys, "parse", "a red car")
    assert code == 0 and "the only noun phrase is the whole prompt" in stdout
    code, stdout, _ = sdrt_output(capsys, "parse", "cats")
    assert code == 0 and "no noun phrase of two or more words" in stdout


def test_api_input_errors_do_not_leak_cli_flags(pipe):
    for arguments in ({"trees": ["(ROOT (NP"]}, {"phrases": ["a dog"]}, {"parser": "tree"}):
        with pytest.raises(InputError) as caught:
            pipe(PROMPT, num_inference_steps=1, width=64, height=64, **arguments)
        assert "--" not in str(caught.value), caught.value


def test_nothing_is_left_behind_by_a_refused_run(tmp_path, capsys):
    for arguments in (["generate", PROMPT, "--guidance", "1e30", "--out", str(tmp_path / "x.png"), *FAST],
                      ["generate", PROMPT, "--steps", "5000", "--out", str(tmp_path / "y.png")]):
        assert run_sdrt(capsys, *arguments)[0] == 2
    assert not list(tmp_path.iterdir()) and not leftovers(tmp_path)
