"""Source: the trained source model, evaluated as it is (no adaptation). The reference row of every TTA table.

Provenance: the ``source`` setting of mariodoebler/test-time-adaptation (``classification/
methods/source.py``): the model in eval mode, so BatchNorm normalises with its training
statistics; nothing is updated and ``reset()`` has nothing to undo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxbench.methods.registry import register_method
from fluxbench.methods.tta_common import TestTimeMethod


@dataclass
class SourceHparams:
    source_model: str  # which of the benchmark's source_models (default, vit, large...)


@register_method("source")
class Source(TestTimeMethod):
    Hparams = SourceHparams

    def __init__(self, hparams: SourceHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = self.source_model(hparams.source_model).eval().requires_grad_(False)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            return self.model(x).float()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(x)

    def reset(self) -> None:
        """Nothing to undo: the source model never changes."""
