"""The newer surfaces as an adversary would use them: eval's plugged-in scorers and outputs, seeds
at the top of the range, attention-map folders, the Python API's argument types, damaged model
folders and the training scripts' options (issue 26)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import pytest

from sd_struct_rt.errors import UserError

from tests.hardening import FAST, PROMPT, leftovers, one_error_line, run_sdrt, snapshot

EVAL = ["eval", "--model", "tiny", "--seeds", "1", "--steps", "2", "--modes", "plain", "--quiet"]


@pytest.fixture
def prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\n")
    return prompts


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a scorer module of the user's under a fresh name; forgotten again afterwards."""
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in written:
        sys.modules.pop(name, None)


SCORE_OK = """
    from sd_struct_rt.evaluation import Score

    class Judge:
        name = "judge"
        def score(self, prompt, image):
            return Score(True, "fine")
"""


# --- 1. eval: the user's scorer failing ------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("raise RuntimeError('no GPU for the judge')\n",
     "module judge_{n} failed on import (RuntimeError: no GPU for the judge)"),
    ("import sys\nsys.exit(3)\n", "module judge_{n} failed on import (SystemExit: 3)"),
    ("x = (\n", "module judge_{n} failed on import (SyntaxError"),
    ("import a_module_nobody_installed\n",
     "module judge_{n} failed on import (ModuleNotFoundError: No module named 'a_module_nobody_installed')"),
    ("class Judge:\n    name = 'j'\n    def __init__(self):\n        raise ValueError('weights missing')\n"
     "    def score(self, prompt, image):\n        pass\n",
     "judge_{n}.Judge() failed (ValueError: weights missing)"),
    ("def __getattr__(name):\n    raise KeyError(name)\n", "judge_{n}.Judge failed (KeyError: 'Judge')"),
])
def test_a_scorer_module_failing_to_load_is_one_line_naming_it(tmp_path, capsys, user_module, prompts_file,
                                                               source, expected):
    number = len(list(tmp_path.glob("judge_*.py")))
    name = user_module(f"judge_{number}", source)
    out = tmp_path / "r.json"
    line = one_error_line(*run_sdrt(capsys, *EVAL, "--prompts-file", str(prompts_file), "--scorer",
                                    f"{name}:Judge", "--out", str(out)),
                          f"cannot load scorer '{name}:Judge'", expected.format(n=number))
    assert "\n" not in line
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("method, expected", [
    ("    def score(self, prompt, image):\n        raise ZeroDivisionError('division by zero')\n",
     "score() failed on the image of 'a red car', seed 0, mode plain (ZeroDivisionError: division by zero)"),
    ("    def score(self, prompt, image):\n        return None\n",
     "score() returned NoneType on the image of 'a red car', seed 0, mode plain, not a Score"),
    ("    def score(self, prompt, image):\n        return Score(True, ['not', 'a', 'name'])\n",
     "score() returned an outcome of type list"),
    ("    def check(self, prompt):\n        raise LookupError('no such prompt')\n"
     "    def score(self, prompt, image):\n        return Score(True, 'fine')\n",
     "check() failed on the prompt 'a red car' (LookupError: no such prompt)"),
])
def test_a_scorer_failing_on_an_image_is_one_line_and_leaves_no_results(tmp_path, capsys, user_module,
                                                                         prompts_file, method, expected):
    name = user_module(f"failing_{abs(hash(method))}",
                       "from sd_struct_rt.evaluation import Score\n\nclass Judge:\n    name = 'j'\n" + method)
    out, sheet = tmp_path / "r.json", tmp_path / "s.png"
    one_error_line(*run_sdrt(capsys, *EVAL, "--prompts-file", str(prompts_file), "--scorer", f"{name}:Judge",
                             "--out", str(out), "--sheet", str(sheet)),
                   f"scorer {name}.Judge: ", expected)
    assert not out.exists() and not sheet.exists() and not leftovers(tmp_path)


def test_a_scorer_details_of_numpy_numbers_are_written_and_rates_print(tmp_path, capsys, user_module, prompts_file):
    name = user_module("numpy_judge", """
        import numpy as np
        from sd_struct_rt.evaluation import Score

        class Judge:
            name = "np"
            def score(self, prompt, image):
                return Score(np.bool_(True), "fine", {"brightness": np.float32(0.5), "where": np.int64(3)})
    """)
    out = tmp_path / "r.json"
    code, stderr = run_sdrt(capsys, *EVAL, "--prompts-file", str(prompts_file), "--scorer", f"{name}:Judge",
                            "--out", str(out))
    assert code == 0, stderr
    assert json.loads(out.read_text())["trials"][0]["details"] == {"brightness": 0.5, "where": 3}


# --- 2. two outputs of one command naming one file --------------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dot", "dotdot", "symlink", "hardlink"])
def test_two_outputs_naming_one_file_are_refused_before_any_work(tmp_path, capsys, prompts_file, monkeypatch,
                                                                 spelling):
    import sd_struct_rt.pipeline as pipeline

    monkeypatch.setattr(pipeline.StructuredDiffusionPipeline, "from_pretrained",
                        classmethod(lambda *args, **kwargs: pytest.fail("a model was loaded")))
    (tmp_path / "sub").mkdir()
    sheet = tmp_path / "r.png"
    out = {"same": sheet, "dot": tmp_path / "." / "r.png", "dotdot": tmp_path / "sub" / ".." / "r.png",
           "symlink": tmp_path / "link.png", "hardlink": tmp_path / "hard.png"}[spelling]
    if spelling in ("symlink", "hardlink"):
        sheet.write_bytes(b"the user's picture")
        (out.symlink_to(sheet) if spelling == "symlink" else os.link(sheet, out))
    before = snapshot(tmp_path)
    one_error_line(*run_sdrt(capsys, *EVAL, "--prompts-file", str(prompts_file), "--out", str(out),
                             "--sheet", str(sheet)),
                   "--out", "--sheet", "name the same file")
    assert snapshot(tmp_path) == before


# --- 3. seeds past the top, modes twice ------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "compare"])
@pytest.mark.parametrize("seed, seeds", [(2**63 - 1, 2), (2**63 - 3, 4)])
def test_seeds_that_would_pass_the_largest_are_refused_quoting_only_what_was_given(tmp_path, capsys, prompts_file,
                                                                                   command, seed, seeds):
    out = tmp_path / "x.png"
    base = ([command, "--prompts-file", str(prompts_file), "--sheet", str(out), "--modes", "plain"]
            if command == "eval" else [command, PROMPT, "--out", str(out), "--width", "64", "--height", "64"])
    base += ["--model", "tiny", "--steps", "1", "--quiet"]
    line = one_error_line(*run_sdrt(capsys, *base, "--seed", str(seed), "--seeds", str(seeds)),
                          f"--seed {seed} with --seeds {seeds} would pass 2**63-1")
    quoted = {int(number) for number in re.findall(r"\d{6,}", line)}
    assert quoted == {seed}, line
    assert not out.exists() and not leftovers(tmp_path)
    # the last seeds that fit do run
    assert run_sdrt(capsys, *base, "--seed", str(2**63 - seeds), "--seeds", str(seeds))[0] == 0


@pytest.mark.parametrize("modes", ["plain,plain", "values, values", "plain,keys,plain"])
def test_compare_refuses_a_mode_twice_as_eval_does(tmp_path, capsys, prompts_file, modes):
    out = tmp_path / "x.png"
    one_error_line(*run_sdrt(capsys, "compare", PROMPT, "--modes", modes, "--out", str(out)), "distinct modes")
    one_error_line(*run_sdrt(capsys, "eval", "--prompts-file", str(prompts_file), "--modes", modes,
                             "--sheet", str(out)), "distinct modes")
    assert not out.exists()


# --- 4. attention maps into a folder that cannot be made -------------------------------------------

@pytest.mark.parametrize("where, expected", [
    ("file", "is a file, not a folder"),
    ("under-a-file", "is a file, not a folder"),
    ("broken-link", "broken link"),
    ("same-as-out", "name the same file"),
])
def test_an_attention_map_folder_that_cannot_be_made_is_refused_before_the_image(tmp_path, capsys, where,
                                                                                  expected):
    out = tmp_path / "x.png"
    (tmp_path / "a-file").write_text("the user's notes")
    maps = {"file": tmp_path / "a-file", "under-a-file": tmp_path / "a-file" / "maps",
            "broken-link": tmp_path / "link", "same-as-out": out}[where]
    if where == "broken-link":
        maps.symlink_to(tmp_path / "nowhere" / "maps")
    before = snapshot(tmp_path)
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(out), "--attention-maps", str(maps), *FAST),
                   "--attention-maps", expected)
    assert snapshot(tmp_path) == before


def test_a_read_only_attention_map_folder_is_refused_before_the_image(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = tmp_path / "x.png"
        one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(out), "--attention-maps",
                                 str(locked / "maps"), *FAST), "--attention-maps")
        assert not out.exists()
    finally:
        locked.chmod(0o755)


def test_maps_failing_after_the_image_leave_neither_and_keep_the_users_file(tmp_path, capsys, monkeypatch):
    import sd_struct_rt.attention_maps as attention_maps

    out, maps = tmp_path / "x.png", tmp_path / "maps"
    out.write_bytes(b"the user's earlier picture")
    real = attention_maps.write_bytes_atomically
    calls = []

    def fail_on_the_third(path, data, what="file"):
        calls.append(path)
        if len(calls) == 3:
            raise UserError(f"cannot write {what} {path}: the disk is full")
        real(path, data, what)

    monkeypatch.setattr(attention_maps, "write_bytes_atomically", fail_on_the_third)
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(out), "--attention-maps", str(maps), *FAST),
                   "the disk is full")
    assert out.read_bytes() == b"the user's earlier picture"
    assert not maps.exists() and not leftovers(tmp_path)
    monkeypatch.setattr(attention_maps, "write_bytes_atomically", real)
    assert run_sdrt(capsys, "generate", PROMPT, "--out", str(out), "--attention-maps", str(maps), *FAST)[0] == 0
    assert out.read_bytes().startswith(b"\x89PNG") and (maps / "x-attention.json").is_file()


# --- 5. the Python API: arguments of the wrong type ------------------------------------------------

@pytest.fixture(scope="module")
def pipe():
    from sd_struct_rt import StructuredDiffusionPipeline

    return StructuredDiffusionPipeline.from_pretrained("tiny", device="cpu")


API_FAST = dict(num_inference_steps=2, width=64, height=64)


@pytest.mark.parametrize("arguments, expected", [
    (dict(scheduler=["pndm"]), "scheduler must be one of pndm"),
    (dict(scheduler=3), "scheduler must be one of pndm"),
    (dict(parser=5), "parser must be one of spacy, stanza, scene-graph, tree, a parser object"),
    (dict(parser=object()), "parser must be one of"),
    (dict(mode=["values"]), "mode must be one of values"),
    (dict(mode=None), "mode must be one of values"),
    (dict(negative_prompt=3), "negative_prompt must be a string or a list of strings"),
    (dict(negative_prompt=[None]), "negative_prompt must be a string or a list of strings"),
    (dict(phrases=[1, 2]), "phrases must be a string or a list of strings; item 0 is int"),
    (dict(phrases=5), "phrases must be a string or a list of strings, not int"),
    (dict(trees=["(NP (DT a))", b"(NP)"]), "trees must be a string or a list of strings; item 1 is bytes"),
    (dict(attention_maps="yes"), "attention_maps must be True or False, not 'yes'"),
    (dict(attention_maps=None), "attention_maps must be True or False"),
    (dict(max_levels="3"), "max_levels must be a whole number"),
    (dict(seed=[None]), "seed must be a whole number"),
    (dict(guidance_scale="7"), "guidance_scale must be a number"),
])
def test_api_arguments_of_the_wrong_type_are_one_line_input_errors(pipe, arguments, expected):
    from sd_struct_rt import InputError

    for call in (pipe.check_inputs, pipe):
        with pytest.raises(InputError) as raised:
            call(PROMPT, **{**API_FAST, **arguments})
        message = str(raised.value)
        assert message.startswith(next(iter(arguments))) and expected in message and "\n" not in message


@pytest.mark.parametrize("progress", ["x", 5, [print]])
def test_a_progress_that_is_not_callable_is_refused_before_any_step(pipe, progress):
    from sd_struct_rt import InputError

    with pytest.raises(InputError, match=r"^progress must be a function progress\(done, total\) or None"):
        pipe(PROMPT, progress=progress, **API_FAST)
    with pytest.raises(InputError, match="^progress must be"):
        pipe.prepare(pipe.check_inputs(PROMPT, **API_FAST), progress)


@pytest.mark.parametrize("construct, expected", [
    (lambda cls: cls.from_pretrained(None), "model must be an embedded model's name"),
    (lambda cls: cls.from_pretrained(5), "model must be"),
    (lambda cls: cls.from_pretrained(["tiny"]), "model must be"),
    (lambda cls: cls.from_pretrained("tiny", device=None), "device must be auto, cpu or cuda, not None"),
    (lambda cls: cls.from_pretrained("tiny", device=0), "device must be"),
    (lambda cls: cls.from_pretrained("tiny", precision=3), "precision must be fp32 or fp16, not 3"),
    (lambda cls: cls.from_engines(None), "folder must be an engine set's folder"),
    (lambda cls: cls.from_engines(3.5), "folder must be"),
    (lambda cls: cls.from_engines("engines/x", cuda_graphs="x"), "cuda_graphs must be True or False, not 'x'"),
    (lambda cls: cls.from_engines("engines/x", model=5), "model must be"),
    (lambda cls: cls.from_engines("engines/x", backend=["tensorrt"]), "backend must be"),
    (lambda cls: cls.from_engines("engines/x", device=None), "device must be"),
])
def test_constructors_refuse_arguments_of_the_wrong_type_before_loading(monkeypatch, construct, expected):
    import sd_struct_rt.manifest as manifest
    import sd_struct_rt.model as model
    from sd_struct_rt import InputError, StructuredDiffusionPipeline

    monkeypatch.setattr(model, "load_model", lambda *args: pytest.fail("a model was loaded"))
    monkeypatch.setattr(manifest, "read_manifest", lambda *args: pytest.fail("a manifest was read"))
    with pytest.raises(InputError) as raised:
        construct(StructuredDiffusionPipeline)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_a_path_object_names_a_model_as_its_text_does(tmp_path):
    from pathlib import Path

    from sd_struct_rt import StructuredDiffusionPipeline
    from sd_struct_rt.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        StructuredDiffusionPipeline.from_pretrained(Path(tmp_path / "no-such-model"))


# --- 7. the training scripts' options --------------------------------------------------------------

def training_script(name: str):
    import importlib.util

    from tests.training import TRAIN_FOLDER

    if str(TRAIN_FOLDER) not in sys.path:  # train_shapes_clip imports train_shapes from its own folder
        sys.path.insert(0, str(TRAIN_FOLDER))
    spec = importlib.util.spec_from_file_location(f"hardening_{name}", TRAIN_FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BAD_TRAINING_OPTIONS = [
    (["--scenes", "0"], "--scenes must be between 1 and"),
    (["--scenes", "-5"], "--scenes must be between 1 and"),
    (["--threads", "0"], "--threads must be between 1 and"),
    (["--threads", "two"], "--threads must be a whole number, not 'two'"),
    (["--unet-batch", "0"], "--unet-batch must be between 1 and"),
    (["--unet-lr", "nan"], "--unet-lr must be a finite number above 0"),
    (["--unet-lr", "-0.001"], "--unet-lr must be a finite number above 0"),
    (["--minutes-budget", "nan"], "--minutes-budget must be a finite number above 0"),
    (["--minutes-budget", "inf"], "--minutes-budget must be a finite number above 0"),
    (["--minutes-budget", "-1"], "--minutes-budget must be a finite number above 0"),
    (["--minutes-budget", "0"], "--minutes-budget must be a finite number above 0"),
    (["--seed", "-1"], "--seed must be between 0 and"),
]


@pytest.mark.parametrize("script, extra", [
    ("train_shapes", [(["--vae-batch", "0"], "--vae-batch must be between 1 and"),
                      (["--vae-lr", "nan"], "--vae-lr must be a finite number above 0"),
                      (["--latent-penalty", "-1"], "--latent-penalty must be a finite number from 0"),
                      (["--latent-penalty", "nan"], "--latent-penalty must be a finite number from 0")]),
    ("train_shapes_clip", [(["--clip-batch", "0"], "--clip-batch must be between 1 and"),
                           (["--clip-lr", "nan"], "--clip-lr must be a finite number above 0")]),
])
def test_bad_training_options_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, script, extra):
    module = training_script(script)
    monkeypatch.setattr(module, "train", lambda *args: pytest.fail("training started"))
    out = tmp_path / "model"
    for arguments, expected in BAD_TRAINING_OPTIONS + extra:
        monkeypatch.setattr(sys, "argv", [f"{script}.py", "--out", str(out), *arguments])
        with pytest.raises(SystemExit) as exited:
            module.main()
        stderr = capsys.readouterr().err
        assert exited.value.code == 2, stderr
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: {expected}"), stderr
        assert not out.exists() and not list(tmp_path.iterdir())


def test_a_budget_of_nan_minutes_writes_no_model_folder(tmp_path):
    from tests.training import run_recipe

    result = run_recipe("train_shapes.py", tmp_path / "model", "--minutes-budget", "nan", "--vae-batch", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "train_shapes.py: error: --minutes-budget must be a finite number above 0 " \
                                    "up to 1e+06, not nan"
    assert not list(tmp_path.iterdir())


# --- 6. damaged model folders -----------------------------------------------------------------------

def edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def garbage_header(path):
    path.write_bytes((2**60).to_bytes(8, "little") + b"\x00" * 64)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def wrong_offsets(path):
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [dimension + 1 for dimension in header[name]["shape"]] or [2]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length:])


DAMAGES = {
    "string hidden_size": (lambda f: edit_json(f / "text_encoder/config.json", hidden_size="64"),
                           "text_encoder/config.json: field hidden_size must be a whole number above 0, not '64'"),
    "float sample_size": (lambda f: edit_json(f / "unet/config.json", sample_size=32.5),
                          "unet/config.json: field sample_size must be a whole number above 0"),
    "empty vae blocks": (lambda f: edit_json(f / "vae/config.json", block_out_channels=[]),
                         "vae/config.json: field block_out_channels must be a non-empty list"),
    "string scaling": (lambda f: edit_json(f / "vae/config.json", scaling_factor="0.18"),
                       "vae/config.json: field scaling_factor must be a finite number above 0"),
    "string layers": (lambda f: edit_json(f / "unet/config.json", layers_per_block="2"),
                      "unet/config.json: field layers_per_block must be a number, not '2'"),
    "string block types": (lambda f: edit_json(f / "unet/config.json", down_block_types="CrossAttnDownBlock2D"),
                           "unet/config.json: field down_block_types must be a non-empty list"),
    "string text layers": (lambda f: edit_json(f / "text_encoder/config.json", num_hidden_layers="two"),
                           "text_encoder/config.json: field num_hidden_layers must be a number, not 'two'"),
    "string beta": (lambda f: edit_json(f / "scheduler/scheduler_config.json", beta_start="0.00085"),
                    "scheduler/scheduler_config.json: field beta_start must be a number, not '0.00085'"),
    "null timesteps": (lambda f: edit_json(f / "scheduler/scheduler_config.json", num_train_timesteps=None),
                       "scheduler/scheduler_config.json: field num_train_timesteps must be a number, not null"),
    "list offset": (lambda f: edit_json(f / "scheduler/scheduler_config.json", steps_offset=["1"]),
                    "scheduler/scheduler_config.json: field steps_offset must be a number"),
    "garbage header": (lambda f: garbage_header(f / "unet/diffusion_pytorch_model.safetensors"),
                       "unet/diffusion_pytorch_model.safetensors: not a safetensors file, or a damaged one"),
    "tiny file": (lambda f: (f / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"\x01"),
                  "vae/diffusion_pytorch_model.safetensors: not a safetensors file, or a damaged one"),
    "truncated": (lambda f: truncate(f / "text_encoder/model.safetensors"),
                  "text_encoder/model.safetensors: the file holds"),
    "wrong shape": (lambda f: wrong_offsets(f / "unet/diffusion_pytorch_model.safetensors"),
                    "unet/diffusion_pytorch_model.safetensors: damaged safetensors header (tensor"),
    "missing unet weights": (lambda f: (f / "unet/diffusion_pytorch_model.safetensors").unlink(),
                             "unet: missing weights (diffusion_pytorch_model.safetensors or"),
    "missing text weights": (lambda f: (f / "text_encoder/model.safetensors").unlink(),
                             "text_encoder: missing weights (model.safetensors or pytorch_model.bin)"),
    "missing vocabulary": (lambda f: (f / "tokenizer/vocab.json").unlink(), "the tokenizer lacks tokenizer/vocab.json"),
    "garbage vocabulary": (lambda f: (f / "tokenizer/vocab.json").write_text("{not json"),
                           "tokenizer: cannot load the tokenizer"),
}


@pytest.fixture(scope="module")
def tiny_folder():
    from sd_struct_rt.model import embedded_model_folder

    return embedded_model_folder("tiny")


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_model_folder_is_one_line_naming_the_file_and_field(tmp_path, capsys, tiny_folder, damage):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder, ignore=shutil.ignore_patterns("sdrt-digests.json"))
    damage_it, expected = DAMAGES[damage]
    damage_it(folder)
    out = tmp_path / "x.png"
    line = one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--model", str(folder), "--out", str(out), *FAST),
                          expected)
    assert str(folder) in line and "TypeError" not in line and "SafetensorError" not in line
    assert not out.exists() and not leftovers(tmp_path)


def test_the_undamaged_copy_loads(tmp_path, capsys, tiny_folder):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder, ignore=shutil.ignore_patterns("sdrt-digests.json"))
    assert run_sdrt(capsys, "generate", PROMPT, "--model", str(folder), "--out", str(tmp_path / "x.png"), *FAST)[0] == 0


@pytest.mark.parametrize("damage, expected", [
    (lambda f: edit_json(f / "text_encoder_2/config.json", projection_dim="32"),
     "text_encoder_2/config.json: field projection_dim must be a whole number above 0"),
    (lambda f: edit_json(f / "text_encoder_2/config.json", hidden_size="64"),
     "text_encoder_2/config.json: field hidden_size must be a whole number above 0"),
    (lambda f: garbage_header(f / "text_encoder_2/model.safetensors"),
     "text_encoder_2/model.safetensors: not a safetensors file, or a damaged one"),
    (lambda f: (f / "tokenizer_2/merges.txt").unlink(), "the tokenizers lack tokenizer_2/merges.txt"),
])
def test_a_damaged_sdxl_folder_names_its_second_encoder(tmp_path, capsys, damage, expected):
    import shutil

    from sd_struct_rt.model import embedded_model_folder

    folder = tmp_path / "model"
    shutil.copytree(embedded_model_folder("tiny-sdxl"), folder, ignore=shutil.ignore_patterns("sdrt-digests.json"))
    damage(folder)
    out = tmp_path / "x.png"
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--model", str(folder), "--out", str(out), *FAST), expected)
    assert not out.exists()
