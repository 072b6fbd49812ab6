"""A stream written down: class order and sample ids per experience, to replay it exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fluxbench.errors import DataError
from fluxbench.streams.experience import Experience


def stream_manifest(experiences: list[Experience], **about: Any) -> dict[str, Any]:
    return {
        **about,
        "class_order": [c for exp in experiences for c in exp.classes],
        "experiences": [
            {
                "index": exp.index,
                "classes": list(exp.classes),
                "metadata": exp.metadata,
                "train_ids": [] if exp.train is None else [str(i) for i in exp.train.ids],
                "test_ids": [str(i) for i in exp.test.ids],
            }
            for exp in experiences
        ],
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stream manifest {path} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"stream manifest {path} is not valid JSON: {err}") from None
    if "class_order" not in manifest or "experiences" not in manifest:
        raise DataError(f"stream manifest {path} lacks 'class_order' or 'experiences'")
    return manifest
