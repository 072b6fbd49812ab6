"""Where fluxbench keeps what it builds once: pre-trained embedded backbones, decoded data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """``$FLUXBENCH_CACHE``, else ``$XDG_CACHE_HOME/fluxbench``, else ``~/.cache/fluxbench``."""
    root = os.environ.get("FLUXBENCH_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fluxbench"
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_hash(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able recipe (key order does not matter)."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
