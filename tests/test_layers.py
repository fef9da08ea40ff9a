"""The layer map of docs/ARCHITECTURE.md holds in the code: no module imports from a layer below it.

Every import of every module counts, also those inside functions (how optional runtimes stay
optional), and every top-level module of the package must be placed in the map.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sd_struct_rt"
MAP = ROOT / "docs" / "ARCHITECTURE.md"
# The map's one exception: the package's front door hands out the pipeline, on first use.
FRONT_DOOR = ("__init__", "pipeline")


def layers() -> dict[str, int]:
    """Top-level module -> its layer number, from the map's table."""
    table = {}
    for number, modules in re.findall(r"^\| (\d+) [^|]*\| (.+) \|$", MAP.read_text(), flags=re.MULTILINE):
        for module in re.findall(r"`([^`]+)`", modules):
            table[module] = int(number)
    return table


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The sd_struct_rt modules ``path`` imports anywhere in it, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # "from . import x" names a submodule or a name of the package itself
                found |= {f"{target}.{alias.name}" for alias in node.names} if not node.module else {target}
            elif (node.module or "").startswith("sd_struct_rt"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sd_struct_rt")}
    return found


def test_the_map_names_every_top_level_module_once():
    table = layers()
    modules = {path.stem for path in PACKAGE.glob("*.py")} | \
        {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert sorted(modules - set(table)) == []  # every module has a layer
    assert sorted(set(table) - modules) == []  # and the map names nothing that is gone


def lower_layer_imports(path: Path) -> list[str]:
    table = layers()
    importer = top_level(module_name(path))
    return sorted(target for target in imported(path)
                  if table.get(top_level(target), -1) > table[importer] and (importer, top_level(target)) != FRONT_DOOR)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_no_module_imports_from_a_lower_layer(path):
    assert lower_layer_imports(path) == []


def test_the_check_sees_a_lower_layer_import(tmp_path, monkeypatch):
    """The rule can fail: a backend that imported the pipeline, even inside a function, is caught."""
    fake = tmp_path / "sd_struct_rt" / "backends" / "sneaky.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..pipeline import StructuredDiffusionPipeline\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert lower_layer_imports(fake) == ["sd_struct_rt.pipeline"]
