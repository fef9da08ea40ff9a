"""Where sd-struct-rt keeps what it derives once per machine (model folders, the CLIP vocabulary)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SDRT_CACHE``, else ``$XDG_CACHE_HOME/sd-struct-rt``, else ``~/.cache/sd-struct-rt``."""
    explicit = os.environ.get("SDRT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sd-struct-rt"
