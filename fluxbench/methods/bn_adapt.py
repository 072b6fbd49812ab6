"""Test-time normalisation statistics only (BN adapt): the source model, with every BatchNorm layer normalising
with the current test batch's statistics instead of the source's running ones, and nothing trained.

Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation" (NeurIPS 2020);
Nado et al., "Evaluating prediction-time batch normalization for robustness under covariate shift" (2020). The
baseline that shows how much of Tent's or ViDA's gain is the use of test-batch statistics alone (Tent's paper
reports it as "BN"). As in Tent's ``configure_model``: train mode for BN, running statistics dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxbench.errors import ConfigError
from fluxbench.methods.registry import register_method
from fluxbench.methods.tta_common import BATCH_NORMS, DROPOUTS, TestTimeMethod, use_batch_statistics


@dataclass
class BNAdaptHparams:
    source_model: str  # which of the benchmark's source_models


@register_method("bn_adapt")
class BNAdapt(TestTimeMethod):
    Hparams = BNAdaptHparams

    def __init__(self, hparams: BNAdaptHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = self.source_model(hparams.source_model).requires_grad_(False).train()
        if not any(isinstance(m, BATCH_NORMS) for m in self.model.modules()):
            raise ConfigError("method bn_adapt needs a source model with BatchNorm layers")
        for module in self.model.modules():
            if isinstance(module, DROPOUTS):
                module.eval()
        use_batch_statistics(self.model)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            return self.model(x).float()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(x)

    def reset(self) -> None:
        """Nothing to undo: no statistic or parameter is kept between batches."""
