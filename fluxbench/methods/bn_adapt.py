"""Test-time normalisation statistics only (BN adapt): the source model, with every BatchNorm layer normalising
with the current test batch's statistics instead of the source's running ones, and nothing trained.

Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation" (NeurIPS 2020);
Nado et al., "Evaluating prediction-time batch normalization for robustness under covariate shift" (2020). The
baseline that shows how much of Tent's or ViDA's gain is the use of test-batch statistics alone (Tent's paper
reports it as "BN"). As in Tent's ``configure_model``: train mode for BN, running statistics dropped. Everything
else is :class:`~fluxbench.methods.source.Source`'s: no update, nothing to reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxbench.errors import ConfigError
from fluxbench.methods.registry import register_method
from fluxbench.methods.source import Source
from fluxbench.methods.tta_common import BATCH_NORMS, DROPOUTS, use_batch_statistics


@dataclass
class BNAdaptHparams:
    source_model: str  # which of the benchmark's source_models


@register_method("bn_adapt")
class BNAdapt(Source):
    Hparams = BNAdaptHparams

    def __init__(self, hparams: BNAdaptHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        if not any(isinstance(m, BATCH_NORMS) for m in self.model.modules()):
            raise ConfigError("method bn_adapt needs a source model with BatchNorm layers")
        self.model.train()  # BatchNorm with the batch's statistics...
        for module in self.model.modules():
            if isinstance(module, DROPOUTS):
                module.eval()  # ...and no dropout
        use_batch_statistics(self.model)
