"""Building timm models with weights from a local file, never from the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from fluxbench.errors import DataError


def create_timm_model(model_name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with weights from ``weights`` (a local file); no file means random init."""
    if weights is None:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(f"weight file {path} for {model_name} does not exist")
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
