"""MIGU, MagnItude-based Gradient Updating (Du et al., EMNLP Findings 2024, arXiv 2406.17245).

Upstream code: github.com/wenyudu/MIGU (``src/accelerate_local.py``, ``src/uie_trainer_ft.py``); spec:
specs/migu.md. Full fine-tuning in which, from the second task on, every optimiser step updates only the
output units (weight rows) of each ``nn.Linear`` whose summed |output| over the step's tokens is at or
above the per-layer quantile ``q`` (0.7: the top 30 % rows move). Biases, norms and embeddings get full
updates; the mask is recomputed every step; task 1 is plain fine-tuning.

What differs from upstream, all harness decisions recorded in conf/method/migu.yaml:

- the mask is applied to the gradient the optimiser consumes (a ``before_optimizer_step`` hook), never
  after an optimiser has copied the gradients (spec section 7);
- the classifier head is not masked by default (``mask_head``): in class-incremental learning the rows of
  new classes start with the smallest outputs and would never learn;
- ``nn.MultiheadAttention`` is hooked as a module, so its in/out projections are masked too
  (:mod:`fluxbench.methods.magnitude_mask`); timm's fused qkv takes one quantile over its 3d rows
  (``qkv_quantile=fused``, as the code) or one per q/k/v third (``split``);
- ``variant=strict`` also undoes the optimiser's update of the masked rows, which momentum and weight decay
  otherwise keep moving (spec section 5, pitfall 3). A variant, not the paper's method.
- ``selection=random`` is the code's ``random_update`` control: a random ``int(q * d_out)`` rows masked;
- ``lora_rank > 0`` is LoRA+MIGU (upstream's LoRA path is broken, spec section 4): LoRA on the q and v thirds of
  every block's qkv (PEFT's default targets for T5, where upstream used them), backbone frozen; rows of B follow
  the combined base + LoRA output, rows of A their own output, with the same q. A harness decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxbench.methods.base import ClassifierModel, check_choice, check_range
from fluxbench.methods.magnitude_mask import SELECTIONS, MagnitudeTracker, restore
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams
from fluxbench.peft import attach
from fluxbench.streams.experience import Experience

VARIANTS = ("grad", "strict")
QKV_QUANTILES = ("fused", "split")


@dataclass
class MiguHparams(TrainingHparams):
    threshold: float  # q: the quantile below which gradient rows are zeroed (upstream ini_threshold)
    selection: str  # magnitude (MIGU) | random (random_update, the same sparsity)
    variant: str  # grad (mask .grad, as the code) | strict (also freeze masked rows through the optimiser step)
    qkv_quantile: str  # fused | split
    mask_head: bool
    mask_first_task: bool  # harness option for pre-trained backbones; the paper trains task 1 unmasked
    lora_rank: int  # 0: full fine-tuning (the paper's FT+MIGU); > 0: LoRA+MIGU
    lora_alpha: float
    lora_dropout: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("threshold", self.threshold, 0, 1, high_open=True)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("qkv_quantile", self.qkv_quantile, QKV_QUANTILES)
        check_range("lora_rank", self.lora_rank, 0)
        check_range("lora_alpha", self.lora_alpha, 0, low_open=True)
        check_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)


@register_method("migu")
class Migu(SupervisedMethod):
    Hparams = MiguHparams

    def __init__(self, hparams: MiguHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        if hparams.lora_rank:
            self.model.backbone.requires_grad_(False)
            lora = attach(self.model.backbone, "lora", targets=("q", "v"), rank=hparams.lora_rank,
                          alpha=hparams.lora_alpha, dropout=hparams.lora_dropout)
            lora.requires_grad_(True)
        exclude = () if hparams.mask_head else ("head",)
        self.tracker = MagnitudeTracker(self.model, exclude, split_qkv=hparams.qkv_quantile == "split")
        self.last_kept: dict[str, torch.Tensor] = {}  # the rows the last step updated, per site (inspection)
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        self.tracker.reset()
        self.tracker.active = exp.index > 0 or self.hparams.mask_first_task

    def before_optimizer_step(self, exp: Experience) -> None:
        if not self.tracker.active:
            return
        self.last_kept = self.tracker.mask_gradients(self.hparams.threshold, self.hparams.selection)
        if self.hparams.variant == "strict":
            self._held = self.tracker.hold_masked(self.last_kept)

    def after_step(self, exp: Experience) -> None:
        restore(self._held)  # strict: the masked rows end the step where they began
        self._held = []

    def after_experience(self, exp: Experience) -> None:
        self.tracker.active = False
        self.tracker.reset()
