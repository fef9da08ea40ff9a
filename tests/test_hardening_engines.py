"""Engine sets edited or damaged by hand: one line naming the field or file, for every consumer."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sd_struct_rt import StructuredDiffusionPipeline, UserError

from tests.hardening import FAST, PROMPT, one_error_line, run_sdrt


def _edit_manifest(change):
    def damage(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return damage


def _write_manifest(text):
    def damage(folder):
        (folder / "manifest.json").write_text(text)
    return damage


def _replace_file(name, make):
    def damage(folder):
        (folder / name).unlink()
        make(folder / name)
    return damage


def _swap(first, second):
    def damage(folder):
        a, b = folder / first, folder / second
        data = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(data)
    return damage


def _truncate(name):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[:100])
    return damage


DAMAGES = {
    "not-json": (_write_manifest("{not json"), "is not a valid manifest (its content"),
    "not-an-object": (_write_manifest("[1, 2, 3]"), "is not a valid manifest"),
    "empty-file": (_write_manifest(""), "is not a valid manifest"),
    "not-utf8": (lambda folder: (folder / "manifest.json").write_bytes(b"\xff\xfe{"), "is not UTF-8"),
    "missing-key": (_edit_manifest(lambda m: m.pop("engine_files")), "field engine_files: field required"),
    "wrong-type": (_edit_manifest(lambda m: m["profile"].update(levels="4")), "field profile.levels"),
    "float-opset": (_edit_manifest(lambda m: m.update(opset=17.5)), "field opset"),
    "impossible-batch": (_edit_manifest(lambda m: m["profile"].update(batch=[3, 1])), "batch range 3:1"),
    "impossible-size": (_edit_manifest(lambda m: m["profile"].update(size=[128, 64])), "size range 128:64"),
    "odd-size": (_edit_manifest(lambda m: m["profile"].update(size=[64, 100])), "multiples of 64"),
    "unknown-key": (_edit_manifest(lambda m: m.update(comment="mine")), "field comment"),
    "unknown-backend": (_edit_manifest(lambda m: m.update(backend="openvino-xyz")), "field backend"),
    "unknown-mode": (_edit_manifest(lambda m: m.update(mode="conjunction")), "field mode"),
    "unknown-family": (_edit_manifest(lambda m: m["model_facts"].update(family="sd9")), "model_facts.family"),
    "old-format": (_edit_manifest(lambda m: m.update(format_version=1)), "has format 1"),
    "bad-digest": (_edit_manifest(lambda m: m["files"].update({"unet.onnx": "abc"})), "not a sha256 digest"),
    "path-escape": (_edit_manifest(lambda m: m["files"].update({"../outside": "0" * 64})), "not a path inside"),
    "absolute-path": (_edit_manifest(lambda m: m["files"].update({"/etc/passwd": "0" * 64})), "not a path inside"),
    "engine-unlisted": (_edit_manifest(lambda m: m["engine_files"].update(unet="other.onnx")),
                        "which field files does not list"),
    "missing-file": (lambda folder: (folder / "vae_decoder.onnx").unlink(), "vae_decoder.onnx is missing"),
    "truncated-file": (_truncate("unet.onnx.data"), "corrupt or was changed"),
    "swapped-files": (_swap("text_encoder.onnx", "vae_decoder.onnx"), "corrupt or was changed"),
    "folder-for-file": (_replace_file("unet.onnx", lambda path: path.mkdir()), "unet.onnx is a folder"),
    "link-for-file": (_replace_file("unet.onnx", lambda path: path.symlink_to("/dev/zero")), "unet.onnx is a link"),
    "pipe-for-file": (_replace_file("text_encoder.onnx", lambda path: os.mkfifo(path)), "is a device or pipe"),
    "manifest-is-folder": (lambda folder: ((folder / "manifest.json").unlink(), (folder / "manifest.json").mkdir()),
                           "not a regular file"),
    "no-manifest": (lambda folder: (folder / "manifest.json").unlink(), "not a finished engine set"),
    "scheduler-edited": (lambda folder: (folder / "scheduler" / "scheduler_config.json").write_text("{}"),
                         "corrupt or was changed"),
}


@pytest.fixture
def damaged(tiny_engines, tmp_path, request):
    damage, expected = DAMAGES[request.param]
    folder = tmp_path / "set"
    shutil.copytree(tiny_engines, folder)
    damage(folder)
    return folder, expected


@pytest.mark.parametrize("damaged", list(DAMAGES), indirect=True)
@pytest.mark.parametrize("consumer", ["generate", "check-engine", "bench", "api"])
def test_a_damaged_set_is_one_line_for_every_consumer(damaged, consumer, capsys, tmp_path):
    folder, expected = damaged
    out = tmp_path / "img.png"
    if consumer == "api":
        with pytest.raises(UserError) as caught:
            StructuredDiffusionPipeline.from_engines(folder)
        message = str(caught.value)
        assert expected in message and "\n" not in message, message
    else:
        arguments = {"generate": ["generate", PROMPT, "--engine", str(folder), "--out", str(out), *FAST],
                     "check-engine": ["check-engine", str(folder)],
                     "bench": ["bench", "--engine", str(folder), "--rounds", "1", "--quiet"]}[consumer]
        message = one_error_line(*run_sdrt(capsys, *arguments), expected)
    assert "sdrt build-engine" in message  # what to do about it
    assert not out.exists()


def test_advice_for_a_damaged_manifest_is_followable(tiny_engines, tmp_path, capsys):
    """'delete X and build it again with: ...' works as printed."""
    import shlex

    folder = tmp_path / "set"
    shutil.copytree(tiny_engines, folder)
    (folder / "manifest.json").write_text("{}")
    message = one_error_line(*run_sdrt(capsys, "check-engine", str(folder)))
    command = message.split("build it again with: ", 1)[1]
    shutil.rmtree(folder)
    assert run_sdrt(capsys, *shlex.split(command)[1:], "--size", "64:64", "--quiet")[0] == 0
    assert run_sdrt(capsys, "check-engine", str(folder))[0] == 0


def test_advice_for_a_corrupt_file_rebuilds_over_the_set_as_printed(tiny_engines, tmp_path, capsys):
    import shlex

    folder = tmp_path / "set with space"
    shutil.copytree(tiny_engines, folder)
    _truncate("unet.onnx.data")(folder)
    message = one_error_line(*run_sdrt(capsys, "check-engine", str(folder)), "rebuild with: ")
    command = shlex.split(message.split("rebuild with: ", 1)[1])
    assert command[:2] == ["sdrt", "build-engine"] and command[-1] == str(folder)
    assert run_sdrt(capsys, *command[1:], "--quiet")[0] == 0
    assert run_sdrt(capsys, "check-engine", str(folder))[0] == 0
