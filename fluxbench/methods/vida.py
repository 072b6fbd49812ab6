"""ViDA: homeostatic visual domain adapters for continual test-time adaptation, on a ViT.

Provenance: Liu et al., "ViDA: Homeostatic Visual Domain Adapter for Continual Test Time
Adaptation", ICLR 2024 (arXiv 2306.04344); code github.com/Yangsenqiao/vida (``cifar/vida.py``,
``cifar/inject_vida.py``, ``imagenet/vida.py``). As there: a low-rank (rank 1) and a high-rank
(rank 128) adapter in parallel on every linear of every attention module (qkv and proj), down
projections Gaussian with std 1/r^2 and up projections zero (the injected model equals the
source model); a mean teacher whose logits on the clean batch are the prediction and the soft
pseudo-label; the uncertainty ``u = 0.1 * mean Var_i[teacher(aug_i(x))]`` over ``num_augment``
CoTTA augmentations; Homeostatic Knowledge Allotment (``u >= thr``: high-rank scale 1 + u,
low-rank 1 - u; else the reverse) in student and teacher; one step on all student parameters
(two learning rates), a two-rate EMA teacher, and the CIFAR code's stochastic restore.
What differs: the adapters are fluxbench's LoRA modules (:mod:`fluxbench.peft`) rather than
replaced linears; the paper's HKA sets both scales, while the released code only ever sets the
low-rank one (``if scale1 ... elif scale2``): ``scale_low_rank_only: true`` reproduces that.
The adapters are warmed up before the stream, as the published runs' are (``warmup=source``, the
default): supervised CE on the source model's own training data for a short schedule, only the
adapters trained (:mod:`fluxbench.backbones.source_warmup`, cached by recipe hash); the authors
release the warmed-up checkpoints but not their recipe, so its schedule (Adam, ``warmup_epochs``,
``warmup_lr``), augmentation and whether they also tuned the backbone are unverified. A released
checkpoint loads instead (``warmup_checkpoint``: the adapters alone or the whole injected model in
fluxbench's names). ``warmup=none`` (up-projections at zero, so HKA has nothing to scale and ViDA
is a full-model mean teacher) and ``hka=false`` (both scales fixed at 1) are the ablations. ViT-B has no
BatchNorm; a ViT that has some (digits-C's conv-stem ViT) normalises with batch statistics in
student and teacher, as CoTTA's ``configure_model`` (the code ViDA's is built on) does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.methods.base import check_choice, check_finite, check_range
from fluxbench.methods.registry import register_method
from fluxbench.methods.tta_common import TestTimeMethod, check_common, make_optimizer, use_batch_statistics
from fluxbench.peft import PeftHandle, attach


@dataclass
class VidaHparams:
    lr: float  # backbone and head (OPTIM.LR)
    vida_lr: float  # the adapters (OPTIM.ViDALR)
    optimizer: str  # adam (CIFAR code) | sgd (ImageNet code: momentum 0.9, nesterov)
    momentum: float
    ema: float  # teacher EMA of non-adapter weights (OPTIM.MT)
    ema_vida: float  # teacher EMA of the adapters (OPTIM.MT_ViDA)
    rank_low: int
    rank_high: int
    unc_threshold: float  # --unc_thr
    num_augment: int
    loss: str  # soft_ce (CIFAR code) | symmetric_ce (ImageNet code)
    restore_prob: float  # stochastic restore per element and step (CIFAR code: 0.1; ImageNet: 0)
    scale_low_rank_only: bool  # true: the released code's HKA (the high-rank scale stays 1)
    source_model: str
    warmup: str = "source"  # source: adapters trained on the source data first (the published runs) | none: ablation
    warmup_checkpoint: str | None = None  # a released warmed-up model or adapters, instead of training them here
    warmup_epochs: int = 2
    warmup_lr: float = 1e-3
    warmup_batch_size: int = 64
    hka: bool = True  # false: the HKA-off ablation (both adapter scales stay 1)

    def __post_init__(self) -> None:
        check_common(self.lr, self.momentum)
        check_range("vida_lr", self.vida_lr, 0, 10)
        check_range("ema", self.ema, 0, 1)
        check_range("ema_vida", self.ema_vida, 0, 1)
        check_range("rank_low", self.rank_low, 1)
        check_range("rank_high", self.rank_high, 1)
        check_range("unc_threshold", self.unc_threshold, 0)
        check_range("num_augment", self.num_augment, 2)
        check_range("restore_prob", self.restore_prob, 0, 1)
        check_choice("loss", self.loss, ("soft_ce", "symmetric_ce"))
        check_choice("warmup", self.warmup, ("source", "none"))
        check_range("warmup_epochs", self.warmup_epochs, 1)
        check_range("warmup_lr", self.warmup_lr, 0, 10, low_open=True)
        check_range("warmup_batch_size", self.warmup_batch_size, 1)
        if self.warmup == "none" and self.warmup_checkpoint:
            raise ConfigError("method.warmup=none contradicts method.warmup_checkpoint; drop one of them")


def inject(model: nn.Module, rank: int) -> PeftHandle:
    """One ViDA branch: LoRA of ``rank`` on qkv and proj of every block, Down ~ N(0, (1/r^2)^2), Up = 0."""
    backbone = getattr(model, "backbone", model)
    return attach(backbone, "lora", targets=("qkv", "proj"), rank=rank, scale=1.0, init_std=1.0 / rank**2)


def hka_scales(u: float, threshold: float) -> tuple[float, float]:
    """Homeostatic Knowledge Allotment: (low-rank scale, high-rank scale) for uncertainty ``u``."""
    if u >= threshold:
        return 1.0 - u, 1.0 + u
    return 1.0 + u, 1.0 - u


@register_method("vida")
class ViDA(TestTimeMethod):
    Hparams = VidaHparams

    def __init__(self, hparams: VidaHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.student = self.source_model(hparams.source_model)
        self.low, self.high = inject(self.student, hparams.rank_low), inject(self.student, hparams.rank_high)
        adapter_ids = {id(p) for handle in (self.low, self.high) for p in handle.parameters()}
        self.adapter_names = {n for n, p in self.student.named_parameters() if id(p) in adapter_ids}
        self.warmup_record = self._warm_up()  # before batch statistics: the warm-up sees the source model as trained
        self.student.train().requires_grad_(True)  # the released code trains every parameter
        use_batch_statistics(self.student)
        named = list(self.student.named_parameters())
        groups = [{"params": [p for n, p in named if n not in self.adapter_names], "lr": hparams.lr},
                  {"params": [p for n, p in named if n in self.adapter_names], "lr": hparams.vida_lr}]
        self.optimizer = make_optimizer(groups, hparams.optimizer, hparams.lr, hparams.momentum, nesterov=True)
        self.source_state = {n: p.detach().clone() for n, p in self.student.named_parameters()}
        self.snapshot(self.student, self.optimizer)
        self._new_teacher()
        self.last_uncertainty = 0.0

    def _warm_up(self) -> dict:
        """Train (or load) the adapters on the source data, as the published runs start from; {} for warmup=none."""
        hp = self.hparams
        if hp.warmup == "none":
            return {}
        if self.ctx.warm_up_source is None:
            raise ConfigError("ViDA's source warm-up needs the benchmark's source_models; or set method.warmup=none")
        params = {n: p for n, p in self.student.named_parameters() if n in self.adapter_names}
        recipe = {"checkpoint": hp.warmup_checkpoint} if hp.warmup_checkpoint else {
            "epochs": hp.warmup_epochs, "lr": hp.warmup_lr, "batch_size": hp.warmup_batch_size, "seed": 0}
        return self.ctx.warm_up_source(hp.source_model, self.student, params, recipe)

    def cost(self) -> dict[str, float]:
        """The source-train accuracy before and after the warm-up (the spec asks for it: within about 0.5%)."""
        return {f"warmup_{k}": float(v) for k, v in self.warmup_record.items() if k.startswith("accuracy")}

    def _new_teacher(self) -> None:
        """The teacher: a copy of the student (with handles on its own adapters), eval mode, no gradients."""
        memo: dict = {}
        self.teacher = copy.deepcopy(self.student, memo).eval().requires_grad_(False)
        self.t_low, self.t_high = copy.deepcopy(self.low, memo), copy.deepcopy(self.high, memo)

    def reset(self) -> None:
        super().reset()
        self._new_teacher()
        self.set_scales(1.0, 1.0)

    def set_scales(self, low: float, high: float) -> None:
        for handle in (self.low, self.t_low):
            handle.set_scale(low)
        if not self.hparams.scale_low_rank_only:
            for handle in (self.high, self.t_high):
                handle.set_scale(high)

    @torch.no_grad()
    def uncertainty(self, x: torch.Tensor) -> float:
        """0.1 x the mean (over batch and classes) variance of the teacher's logits over augmented views."""
        from fluxbench.methods.cotta_augment import cotta_augment  # torchvision: 2.5 s of every start-up

        views = torch.stack([self.teacher(cotta_augment(x)).float() for _ in range(self.hparams.num_augment)])
        return 0.1 * float(views.var(dim=0).mean())

    @torch.enable_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if hp.hka:
            self.last_uncertainty = self.uncertainty(x)
            self.set_scales(*hka_scales(self.last_uncertainty, hp.unc_threshold))
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()
        loss = self.consistency(self.student(x).float(), teacher_logits)
        check_finite(loss, "ViDA consistency loss")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_teacher()
        if hp.restore_prob > 0:
            self.stochastic_restore()
        return teacher_logits

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, as ``adapt`` returns them, without a student step or a teacher update."""
        return self.teacher(x).float()

    def consistency(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft_ce = -(teacher.softmax(1) * student.log_softmax(1)).sum(1)
        if self.hparams.loss == "soft_ce":
            return soft_ce.mean()
        reverse = -(student.softmax(1) * teacher.log_softmax(1)).sum(1)
        return (0.5 * soft_ce + 0.5 * reverse).mean()

    @torch.no_grad()
    def update_teacher(self) -> None:
        """theta_T <- a * theta_T + (1 - a) * theta_S; a = ema_vida for adapters, ema for everything else."""
        student = dict(self.student.named_parameters())
        for name, param in self.teacher.named_parameters():
            alpha = self.hparams.ema_vida if name in self.adapter_names else self.hparams.ema
            param.mul_(alpha).add_(student[name], alpha=1.0 - alpha)

    @torch.no_grad()
    def stochastic_restore(self) -> None:
        """Each trainable student element goes back to its source value with probability ``restore_prob``."""
        for name, param in self.student.named_parameters():
            if param.requires_grad:
                mask = torch.rand(param.shape, device=param.device) < self.hparams.restore_prob
                param.copy_(torch.where(mask, self.source_state[name], param))
