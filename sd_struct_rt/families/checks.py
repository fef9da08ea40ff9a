"""Checks of a model folder before anything loads, shared by the families.

A damaged folder is refused in one line naming the file and the field: the type of every config
field we read (``field``), of every field the part's library reads (``matches_defaults``: each
value must have the kind of the class's own default), and every weight file's presence and
safetensors header (``check_weights``). Libraries given such a folder fail deep inside, with a
``TypeError``, ``IndexError`` or ``SafetensorError``.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError

# Bytes per element of each safetensors dtype (those of fractional width are not sized here).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
MAX_HEADER_BYTES = 100_000_000  # what safetensors itself accepts
# Weight files each library loads from a part's folder, in the order it prefers them.
WEIGHT_FILES = {"diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                "transformers": ("model.safetensors", "pytorch_model.bin")}
REDO = "download or copy the model again"


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field(config: Mapping[str, Any], path: Path, name: str, kind: str, required: bool = True) -> Any:
    """Field ``name`` of the config at ``path`` if it is of ``kind``: ``count`` (a whole number
    above 0), ``number`` (finite, above 0), ``text``, ``flag``, ``counts`` (a non-empty list of counts)."""
    if name not in config or config[name] is None:
        if required:
            raise UserError(f"{path}: field {name} is missing; {REDO}")
        return None
    value = config[name]
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    good = {"count": whole and value > 0,
            "number": isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0,
            "text": isinstance(value, str),
            "flag": isinstance(value, bool),
            "counts": isinstance(value, list) and bool(value)
            and all(isinstance(item, numbers.Integral) and not isinstance(item, bool) and item > 0
                    for item in value)}[kind]
    if not good:
        wanted = {"count": "a whole number above 0", "number": "a finite number above 0", "text": "a string",
                  "flag": "true or false", "counts": "a non-empty list of whole numbers above 0"}[kind]
        raise UserError(f"{path}: field {name} must be {wanted}, not {shown(value)}; fix the file or {REDO}")
    return value


def _kind(default: Any) -> str | None:
    if isinstance(default, bool):
        return "flag"
    if isinstance(default, numbers.Real):
        return "number"
    if isinstance(default, str):
        return "text"
    if isinstance(default, (list, tuple)):
        return "list"
    if isinstance(default, dict):
        return "mapping"
    return None


def _is(value: Any, kind: str) -> bool:
    return {"flag": isinstance(value, bool),
            "number": isinstance(value, numbers.Real) and not isinstance(value, bool),
            "text": isinstance(value, str),
            "list": isinstance(value, (list, tuple)),
            "mapping": isinstance(value, dict)}[kind]


def matches_defaults(config: Mapping[str, Any], path: Path, defaults: Mapping[str, Any]) -> None:
    """Each field of ``config`` whose class default is known has that default's kind: a number
    where a number goes (or a list of them, per block), a string where a string goes, a list
    (not empty, when the default is not) where a list goes. None is left to the class."""
    for name, value in config.items():
        default = defaults.get(name)
        required = isinstance(default, Required)
        default = default.default if required else default
        kind = _kind(default)
        if name.startswith("_") or kind is None:
            continue
        if value is None:
            if required:
                raise UserError(f"{path}: field {name} must be {_NAMES[kind]}, not null; fix the file or {REDO}")
            continue
        if kind == "list":
            items = _kind(default[0]) if default else None
            if not isinstance(value, list) or (default and not value):
                wanted = "a non-empty list" if default else "a list"
                raise UserError(f"{path}: field {name} must be {wanted}, not {shown(value)}; fix the file or {REDO}")
            bad = [item for item in value if items is not None and item is not None and not _is(item, items)]
            if bad:
                raise UserError(f"{path}: field {name} must be a list of {_NAMES[items]}s, but holds {shown(bad[0])}; "
                                f"fix the file or {REDO}")
            continue
        per_block = kind in ("number", "flag", "text") and isinstance(value, list) and all(
            item is None or _is(item, kind) for item in value)
        if not _is(value, kind) and not per_block:
            raise UserError(f"{path}: field {name} must be {_NAMES[kind]}, not {shown(value)}; fix the file or {REDO}")
        if kind == "number" and not per_block and not math.isfinite(value):
            raise UserError(f"{path}: field {name} must be a finite number, not {value}; fix the file or {REDO}")


_NAMES = {"flag": "true or false", "number": "a number", "text": "a string", "list": "a list", "mapping": "an object"}


class Required:
    """A default whose parameter's annotation does not admit None: a config's null is refused too."""

    def __init__(self, default: Any):
        self.default = default


def class_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls.__init__``'s parameters (a diffusers model's or scheduler's config),
    as ``Required`` where the annotation says the value cannot be None."""
    import inspect
    import typing

    try:
        parameters = inspect.signature(cls.__init__, eval_str=True).parameters
    except Exception:  # an annotation that does not evaluate here: read them as written
        parameters = inspect.signature(cls.__init__).parameters
    defaults = {}
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty:
            continue
        annotation = parameter.annotation
        if isinstance(annotation, str) or annotation is inspect.Parameter.empty or annotation is typing.Any:
            admits_none = True
        else:
            admits_none = annotation is None or type(None) in typing.get_args(annotation)
        defaults[name] = parameter.default if admits_none or parameter.default is None else Required(parameter.default)
    return defaults


def read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({type(error).__name__}); {REDO}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object; {REDO}")
    return value


def check_weights(part: Path, library: str) -> None:
    """The weight files a library would load from ``part`` are there, and each safetensors one
    (every shard of a sharded one) has a sane header that matches its size."""
    names = WEIGHT_FILES[library]
    for name in names:
        index = part / f"{name}.index.json"
        if (part / name).exists():
            if name.endswith(".safetensors"):
                check_safetensors(part / name)
            elif not (part / name).is_file() or (part / name).stat().st_size == 0:
                raise UserError(f"{part / name}: empty or not a file; {REDO}")
            return
        if index.exists():
            weight_map = read_json_object(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or \
                    not all(isinstance(shard, str) for shard in weight_map.values()):
                raise UserError(f"{index}: field weight_map must map tensor names to shard files; {REDO}")
            for shard in sorted(set(weight_map.values())):
                if "/" in shard or shard.startswith("."):
                    raise UserError(f"{index}: field weight_map names {shard!r}, not a file beside it; {REDO}")
                if not (part / shard).is_file():
                    raise UserError(f"{index}: its shard {shard} is missing; {REDO}")
                if shard.endswith(".safetensors"):
                    check_safetensors(part / shard)
            return
    raise UserError(f"{part}: missing weights ({' or '.join(names)}); {REDO}")


def check_safetensors(path: Path) -> None:
    """A safetensors file whose header is what safetensors would accept: a JSON object of tensors
    with known dtypes and shapes, whose byte ranges tile the data exactly."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if length < 0 or length > min(MAX_HEADER_BYTES, size - 8):
                raise UserError(f"{path}: not a safetensors file, or a damaged one (its header claims "
                                f"{max(length, 0)} bytes of a {size}-byte file); {REDO}")
            raw = handle.read(length)
    except OSError as error:
        raise UserError(f"{path}: unreadable ({error.strerror or type(error).__name__}); {REDO}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: damaged safetensors header (not JSON); {REDO}") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: damaged safetensors header (not a JSON object); {REDO}")
    data = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise UserError(f"{path}: damaged safetensors header (field __metadata__ must map names to "
                                f"strings); {REDO}")
            continue
        where = f"{path}: damaged safetensors header (tensor {shown(name)}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not an object); {REDO}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise UserError(f"{where}: field dtype must be a string, not {shown(dtype)}); {REDO}")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise UserError(f"{where}: field shape must be a list of whole numbers, not {shown(shape)}); {REDO}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(n, int) and not isinstance(n, bool) for n in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise UserError(f"{where}: field data_offsets must be [begin, end], not {shown(offsets)}); {REDO}")
        if dtype in DTYPE_BYTES and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise UserError(f"{where}: field data_offsets spans {offsets[1] - offsets[0]} bytes, but a {dtype} "
                            f"tensor of shape {shape} takes {math.prod(shape) * DTYPE_BYTES[dtype]}); {REDO}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, finish, name in sorted(spans):
        if begin != end:
            raise UserError(f"{path}: damaged safetensors header (tensor {shown(name)}: field data_offsets starts at "
                            f"{begin}, not {end}, where the previous tensor ends); {REDO}")
        end = finish
    if end != data:
        raise UserError(f"{path}: the file holds {data} bytes of tensor data but its header describes {end} "
                        f"(truncated or damaged); {REDO}")
