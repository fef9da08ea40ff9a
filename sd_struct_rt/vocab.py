"""The CLIP BPE vocabulary, taken from the registry package that ships it.

We do not redistribute OpenAI's vocabulary. ``open_clip_torch`` carries it as
``bpe_simple_vocab_16e6.txt.gz``; installing that package would drag in torchvision and a
newer torch, so we download only its wheel, verify the file's hash and keep the file in the
cache. From it we write the ``vocab.json``/``merges.txt`` pair that SD 1.x tokenizer folders hold.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .files import reporting, write_bytes_atomically
from .paths import cache_dir

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CARRIER = "open_clip_torch==3.3.0"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges of the file: 256 byte tokens, their '</w>'
# variants, the merges and the two specials make 49408 ids.
MERGE_COUNT = 49152 - 256 - 2


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _installed_copy() -> Path | None:
    # find_spec locates the package without importing it (importing needs torchvision).
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / VOCAB_FILE
        if candidate.is_file():
            return candidate
    return None


def _fetch_wheel_copy(target: Path) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--dest", scratch, CARRIER]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError(
                f"cannot fetch the CLIP vocabulary: 'pip download {CARRIER}' failed (no network?); "
                f"copy {VOCAB_FILE} from any open_clip_torch wheel to {target}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(f"open_clip/{VOCAB_FILE}")


def _fetch_into(target: Path) -> None:
    installed = _installed_copy()
    data = installed.read_bytes() if installed is not None else _fetch_wheel_copy(target)
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise UserError(f"the CLIP vocabulary from {installed or CARRIER} does not have the expected hash; "
                        f"copy {VOCAB_FILE} from open_clip_torch 3.3.0 to {target}")
    write_bytes_atomically(target, data, "the CLIP vocabulary")


@lru_cache(maxsize=1)
def clip_bpe_vocab() -> Path:
    """Path of a verified ``bpe_simple_vocab_16e6.txt.gz``, fetched once, and again if damaged."""
    target = cache_dir() / "clip" / VOCAB_FILE
    if target.is_file() and _sha256(target) == VOCAB_SHA256:
        return target
    with reporting("write the CLIP vocabulary cache", target):
        target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        warnings.warn(f"the cached CLIP vocabulary {target} was damaged; fetching it again")
    _fetch_into(target)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE: printable bytes map to themselves, the rest to code points
    # from 256 upwards; ids follow this order (printable bytes first), so it must be kept.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in table]
    table.update({byte: chr(256 + i) for i, byte in enumerate(others)})
    return table


def write_tokenizer_folder(folder: Path, overrides: dict | None = None) -> None:
    """Write a CLIP tokenizer folder (the layout of SD 1.x's ``tokenizer/``); ``overrides`` change
    its settings (SD 2.x's and SDXL's second tokenizer pad with ``!``, id 0)."""
    with gzip.open(clip_bpe_vocab(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1:MERGE_COUNT + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += ["".join(merge.split()) for merge in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)},
                                                  ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, **(overrides or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
