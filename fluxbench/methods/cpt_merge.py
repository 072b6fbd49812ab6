"""EMA-Merge for continual pretraining (spec ``fomo_in_flux.md`` section 6).

Provenance: FoMo-in-Flux ``continual_lib/ema_paint.py`` and ``merge.py`` (github.com/ExplainableML/fomo_in_flux,
v1.0): a running merged checkpoint; after task t, ``merged_t = w * theta_t + (1 - w) * merged_{t-1}`` with
interpolation weight ``w = 0.5`` (``merged_0`` = the zero-shot weights); the next task trains from
``merged_t`` and evaluation uses ``merged_t``. What differs: only the interpolation operator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.methods.base import check_range
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method


@dataclass
class EmaMergeHparams(PretrainingHparams):
    merge_weight: float = 0.5  # the weight of the task's fine-tuned model in each merge


@torch.no_grad()
def interpolate(into: nn.Module, other: nn.Module, weight: float) -> None:
    """``into <- weight * into + (1 - weight) * other``, tensor by tensor (floating-point tensors only)."""
    theirs = other.state_dict()
    for key, value in into.state_dict().items():
        if value.is_floating_point():
            value.mul_(weight).add_(theirs[key].to(value.dtype), alpha=1 - weight)


@register_method("ema_merge")
class EmaMerge(PretrainingMethod):
    Hparams = EmaMergeHparams

    def configure(self, model: nn.Module) -> None:
        check_range("merge_weight", self.hparams.merge_weight, 0, 1)
        super().configure(model)
        self.merged = copy.deepcopy(model).requires_grad_(False)  # merged_0: the zero-shot weights

    def end_task(self, index: int) -> None:
        interpolate(self.model, self.merged, self.hparams.merge_weight)  # the model becomes merged_t ...
        self.merged.load_state_dict(self.model.state_dict())  # ... and is the running merge of the next task
