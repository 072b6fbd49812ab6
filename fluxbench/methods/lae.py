"""LAE: Learning-Accumulation-Ensemble with parameter-efficient tuning on a frozen pre-trained ViT.

Paper: Gao, Zhao, Sun, Xi, Zhang, Ghanem, Zhang, "A Unified Continual Learning Framework with General
Parameter-Efficient Tuning", ICCV 2023 (arXiv 2303.10070). Upstream code: github.com/gqk/LAE @ 1680e49
(``main.py``: online/offline PETs, freeze schedule, EMA, ensemble; ``libml/model/pet/*``;
``config/*.yaml``). Spec: ``specs/lae.md``.

- Learning: one *online* PET (``pet=adapter|lora|prefix``) in the first ``adapt_blocks`` blocks trains on
  every task, continuing from its previous state, with a head whose rows for the task's classes start
  at N(0, 0.001^2); the loss is cross-entropy over the current task's classes only.
- Adaptation-speed calibration: learnable output scalars on adapter and LoRA, the compensatory prefix
  (the prefix attention block renormalised to sum to 1), and, from the second task on, the online PET
  frozen for the first ``num_freeze_epochs`` epochs so only the new head rows learn.
- Accumulation: the *offline* PET is created as a copy of the online one when the second task starts
  and follows it after every optimiser step: ``offline <- ema_decay * offline + (1 - ema_decay) * online``.
- Ensemble: the backbone runs with each PET; the prediction is the element-wise max of the two softmaxes.

PET forms (``fluxbench.peft``): adapter beside the attention, reading its normed input, GELU,
bottleneck 5, learnable scale; LoRA rank 5 on the K and V thirds of qkv, learnable scales; prefix of
10 key and 10 value tokens, learnable scales, compensatory. ``pet_size`` (null = those defaults) sets the
bottleneck, rank or length.

What differs from upstream: one head of ``num_classes`` rows instead of a list of per-task heads (rows
of a task are initialised when it starts; the loss touches only them, so older rows get zero gradients
as upstream); ``adapt_blocks`` is a count, clamped to the model's depth (the paper's 5 on a 4-block tiny
ViT means all 4); the optimiser and schedule are the shared loop's (Adam, constant, wd 0 in the YAML).
Inputs: the paper feeds raw [0, 1] pixels to ViT-B (a backbone config with ``mean``/``std`` null does
that); the embedded tiny ViT keeps its configured normalisation (mean/std 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.methods.base import ClassifierModel, check_choice, check_range, over_all_classes
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams
from fluxbench.peft import State, attach, ema_
from fluxbench.peft.sites import find_tower
from fluxbench.streams.experience import Experience

PETS = ("adapter", "lora", "prefix")
DEFAULT_SIZE = {"adapter": 5, "lora": 5, "prefix": 10}
ENSEMBLES = ("max", "mean", "online", "offline")
HEAD_INIT_STD = 0.001


def pet_config(pet: str, size: int) -> dict:
    """The attach() options of LAE's PET of kind ``pet`` (bottleneck, rank or length ``size``)."""
    if pet == "adapter":
        return dict(bottleneck=size, scale=None, dropout=0.0, act="gelu", position="attn", input="normed")
    if pet == "lora":
        return dict(targets=("k", "v"), rank=size, scale=None)
    return dict(length=size, key_scale=None, value_scale=None, compensatory=True)


@dataclass
class LAEHparams(TrainingHparams):
    pet: str  # adapter | lora | prefix
    pet_size: int | None  # bottleneck / rank / prefix length; null: 5 / 5 / 10
    adapt_blocks: int  # PETs go into the first n blocks (clamped to the model's depth)
    ema_decay: float
    num_freeze_epochs: int  # tasks >= 1: online PET frozen for this many epochs
    ensemble: str  # max (LAE) | mean | online | offline (ablations)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pet", self.pet, PETS)
        if self.pet_size is not None:
            check_range("pet_size", self.pet_size, 1)
        check_range("adapt_blocks", self.adapt_blocks, 1)
        check_range("ema_decay", self.ema_decay, 0, 1)
        check_range("num_freeze_epochs", self.num_freeze_epochs, 0, self.epochs - 1)
        check_choice("ensemble", self.ensemble, ENSEMBLES)


@register_method("lae")
class LAE(SupervisedMethod):
    Hparams = LAEHparams

    def __init__(self, hparams: LAEHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        backbone = ctx.build_backbone().to(ctx.device).requires_grad_(False)
        depth = len(find_tower(backbone).container)
        size = hparams.pet_size or DEFAULT_SIZE[hparams.pet]
        self.online = attach(backbone, hparams.pet, blocks=min(hparams.adapt_blocks, depth),
                             **pet_config(hparams.pet, size))
        self.model = ClassifierModel(backbone, ctx.num_classes).to(ctx.device)
        self.offline: State | None = None  # created when the second task starts
        self.register_buffer("num_tasks", torch.zeros((), dtype=torch.long, device=ctx.device))

    @property
    def task(self) -> int:
        """Index of the task being trained (or, after training, of the last one)."""
        return max(int(self.num_tasks) - 1, 0)

    # -- training hooks ---------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        new = exp.new_class_range
        with torch.no_grad():
            self.model.head.weight[new.start:new.stop].normal_(0.0, HEAD_INIT_STD)
            self.model.head.bias[new.start:new.stop].zero_()
        self.num_tasks += 1
        if self.task == 1 and self.offline is None:
            self.offline = self.online.state()

    def before_epoch(self, exp: Experience, epoch: int) -> None:
        """Tasks after the first: the online PET sits out the first ``num_freeze_epochs`` epochs."""
        if self.task == 0 or self.hparams.num_freeze_epochs < 1:
            return
        if epoch == 0:
            self.online.requires_grad_(False)
        if epoch == self.hparams.num_freeze_epochs:
            self.online.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The online PET and the head, even while the PET is frozen (as upstream's optimiser)."""
        return [*self.online.parameters(), *self.model.head.parameters()]

    def training_batches(self, exp: Experience):
        return exp.train_batches(self.hparams.batch_size, self.device, drop_last=True)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, exp: Experience) -> torch.Tensor:
        old = exp.new_class_range.start
        logits = self.model(x)[:, old:exp.num_seen_classes]
        return F.cross_entropy(logits, y - old)

    def after_step(self, exp: Experience) -> None:
        if self.offline is not None:
            ema_(self.offline, self.online, self.hparams.ema_decay)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Softmax over the seen classes with the online PET, and with the offline one (None before task 1)."""
        self.model.eval()
        seen = int(self.num_seen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            online = self.model(x)[:, :seen].float().softmax(1)
            if self.offline is None:
                return online, None
            with self.online.using(self.offline):
                offline = self.model(x)[:, :seen].float().softmax(1)
        return online, offline

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        online, offline = self.experts(x)
        rule = self.hparams.ensemble
        if offline is None or rule == "online":
            scores = online
        elif rule == "offline":
            scores = offline
        else:
            scores = torch.maximum(online, offline) if rule == "max" else (online + offline) / 2
        return over_all_classes(scores, self.ctx.num_classes, 0.0)  # probabilities: unseen classes get none

    # -- state -----------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"offline": self.offline}

    def set_extra_state(self, state: dict) -> None:
        offline = state["offline"]
        self.offline = None if offline is None else {k: v.to(self.device, copy=True) for k, v in offline.items()}
