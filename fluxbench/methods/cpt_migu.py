"""MIGU for continual pretraining: magnitude-based gradient row masking on both CLIP towers.

Provenance: Du et al., EMNLP Findings 2024 (arXiv 2406.17245), github.com/wenyudu/MIGU; spec specs/migu.md,
section 5 for CLIP. The same :class:`~fluxbench.methods.magnitude_mask.MagnitudeTracker` as ``method=migu``:
from the second task on, every step zeroes the gradient rows of every ``nn.Linear`` (MLP ``c_fc``/``c_proj``)
and every ``nn.MultiheadAttention`` projection (``in_proj`` as 3d units, ``out_proj``) of the image and the text
tower whose summed |output| over the step's tokens (patches + CLS, text tokens) is below the per-layer quantile
``threshold``. Biases, norms, embeddings, the projections and the logit scale get full updates.

Harness decisions: the mask is applied before the protocol's gradient clipping (the clip bounds what moves);
``variant=strict`` also undoes AdamW's move of the masked rows (momentum and decay, spec pitfall 3), a variant,
not the paper's method; the hooks' extra in-projection products are not charged to the compute budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.methods.base import check_choice, check_range
from fluxbench.methods.magnitude_mask import SELECTIONS, MagnitudeTracker, restore
from fluxbench.methods.migu import QKV_QUANTILES, VARIANTS
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method


@dataclass
class CptMiguHparams(PretrainingHparams):
    threshold: float = 0.7  # q: rows below the per-layer quantile lose their gradient (top 30 % move)
    selection: str = "magnitude"  # magnitude | random (upstream's random_update control, same sparsity)
    variant: str = "grad"  # grad (mask .grad, as upstream) | strict (masked rows also skip AdamW's move)
    qkv_quantile: str = "fused"  # one quantile over in_proj's 3d rows (upstream) | split: one per q/k/v third
    mask_first_task: bool = False  # upstream trains task 1 unmasked; a harness option for pre-trained CLIPs

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0, 1, high_open=True)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("qkv_quantile", self.qkv_quantile, QKV_QUANTILES)


@register_method("cpt_migu")
class ContinualMigu(PretrainingMethod):
    Hparams = CptMiguHparams

    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.tracker = MagnitudeTracker(model, split_qkv=self.hparams.qkv_quantile == "split")
        self.last_kept: dict[str, torch.Tensor] = {}  # the rows the last step updated, per site (inspection)
        self._held: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def begin_task(self, index: int) -> None:
        self.tracker.reset()
        self.last_kept = {}
        self.tracker.active = index > 0 or self.hparams.mask_first_task

    def before_optimizer_step(self) -> None:
        if not self.tracker.active:
            return
        self.last_kept = self.tracker.mask_gradients(self.hparams.threshold, self.hparams.selection)
        if self.hparams.variant == "strict":
            self._held = self.tracker.hold_masked(self.last_kept)

    def after_optimizer_step(self) -> None:
        restore(self._held)
        self._held = []

    def end_task(self, index: int) -> None:
        self.tracker.active = False  # evaluation forwards record nothing
        self.tracker.reset()

    def task_metrics(self) -> dict[str, float]:
        if not self.last_kept:
            return {}
        kept = sum(int(k.sum()) for k in self.last_kept.values())
        return {"migu_kept_row_fraction": kept / sum(k.numel() for k in self.last_kept.values())}
