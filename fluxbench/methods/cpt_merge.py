"""The merge methods of continual pretraining: EMA-Merge, ZS-Merge, FT-Merge (spec ``fomo_in_flux.md`` section 6).

Provenance: FoMo-in-Flux ``continual_lib/ema_paint.py``, ``zs_paint.py``, ``ft_paint.py`` and ``merge.py``
(github.com/ExplainableML/fomo_in_flux, v1.0). After task t, with ``theta_0`` the zero-shot weights, ``theta_t``
the weights task t trained and ``Merge(new, other)`` the chosen operator (:mod:`fluxbench.methods.merge_ops`;
default interpolation with ``merge_weight`` 0.5 on ``new``):

- ``ema_merge`` (ema_paint): ``merged_t = Merge(theta_t, merged_{t-1})``, ``merged_0 = theta_0``; the next task
  trains from ``merged_t``, evaluation scores it;
- ``zs_merge`` (zs_paint): every task trains from ``theta_0``; evaluation scores the unrolled pairwise merge
  ``merged_t = Merge(theta_t, merged_{t-1})`` (weights decaying with age, not a uniform mean);
- ``ft_merge`` (ft_paint): ``Merge(theta_t, theta_0)``, interpolation with the zero-shot weights, is both what
  the next task trains from and what is scored.

What differs: the merges' elementwise FLOPs are not charged to the budget (the release counts merges at full
fine-tuning's cost, Tab. 4); only parameters are merged (buffers stay: the causal mask has no task vector).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.methods.base import check_choice, check_range
from fluxbench.methods.merge_ops import MERGE_OPS, merge
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method


@dataclass
class MergeHparams(PretrainingHparams):
    merge_op: str = "interpolation"
    merge_weight: float = 0.5  # interpolation: the weight of the task's fine-tuned model in each merge
    ties_prune: float = 0.7  # TIES: the fraction of each task vector's smallest magnitudes trimmed
    merge_scaling: float = 1.0  # task arithmetic, TIES: the scale of the merged task vector


class MergeMethod(PretrainingMethod):
    """Full fine-tuning with a merge after every task; keeps ``zero_shot`` (theta_0) beside the model."""

    Hparams = MergeHparams

    def configure(self, model: nn.Module) -> None:
        check_choice("merge_op", self.hparams.merge_op, MERGE_OPS)
        check_range("merge_weight", self.hparams.merge_weight, 0, 1)
        check_range("ties_prune", self.hparams.ties_prune, 0, 1, high_open=True)
        super().configure(model)
        self.zero_shot = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def merged(self, new: nn.Module, other: nn.Module) -> dict[str, torch.Tensor]:
        keys = [k for k, _ in new.named_parameters()]
        h = self.hparams
        return merge(h.merge_op, [new.state_dict(), other.state_dict()], self.zero_shot.state_dict(), keys,
                     weight=h.merge_weight, prune=h.ties_prune, scaling=h.merge_scaling)

    @staticmethod
    @torch.no_grad()
    def assign(into: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        state = into.state_dict()
        for key, value in tensors.items():
            state[key].copy_(value)


@register_method("ema_merge")
class EmaMerge(MergeMethod):
    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.running = copy.deepcopy(model).requires_grad_(False)  # merged_0: the zero-shot weights

    def end_task(self, index: int) -> None:
        self.assign(self.model, self.merged(self.model, self.running))  # the model becomes merged_t ...
        self.running.load_state_dict(self.model.state_dict())  # ... and is the running merge of the next task


@register_method("zs_merge")
class ZsMerge(MergeMethod):
    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.running = copy.deepcopy(model).requires_grad_(False)

    def end_task(self, index: int) -> None:
        self.assign(self.running, self.merged(self.model, self.running))
        self.model.load_state_dict(self.zero_shot.state_dict())  # the next task starts from theta_0 again

    def evaluation_model(self) -> nn.Module:
        return self.running


@register_method("ft_merge")
class FtMerge(MergeMethod):
    def end_task(self, index: int) -> None:
        self.assign(self.model, self.merged(self.model, self.zero_shot))
