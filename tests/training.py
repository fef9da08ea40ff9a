"""Helpers of the training-recipe tests: run a script of train/ and read what it wrote."""

import subprocess
import sys
from pathlib import Path

TRAIN_FOLDER = Path(__file__).resolve().parent.parent / "train"


def run_recipe(script: str, out: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN_FOLDER / script), "--out", str(out), *arguments],
                          capture_output=True, text=True, timeout=300)


def weights_and_configs(folder: Path) -> dict[str, bytes]:
    """Every file the run wrote but its log (which holds wall times)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "training_log.json"}
