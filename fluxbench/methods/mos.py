"""MOS: Model Surgery for pre-trained-model class-incremental learning.

Paper: Sun, Zhou, Zhao, Gan, Zhan, Ye, "MOS: Model Surgery for Pre-Trained Model-Based Class-Incremental
Learning", AAAI 2025 (arXiv 2412.09441). Upstream code: github.com/sun-hailong/AAAI25-MOS @ 8d5e07c
(``models/mos.py``, ``backbone/vit_mos.py``; byte-identical in LAMDA-PILOT). Spec: ``specs/mos.md``.

A frozen ViT carries one set of parallel adapters (AdaptFormer: beside each MLP, reading the residual
stream, bottleneck ``ffn_num``, scale 0.1, dropout 0.1) that keeps training from task to task; a copy
is stored at the end of every task. While task t trains, each step pulls the adapter towards the mean
of the stored ones by ``adapter_momentum`` (adapter merging), and a dispersion loss pushes batch
features apart and away from the old class means. After each task: per-class feature Gaussians,
classifier alignment of the head on samples from them (t >= 1), and cosine prototypes of the new
classes from the *first* task's adapter. At inference the prototypes guess the task, that task's
adapter and the head refine the guess without training (up to ``max_iter`` rounds), and the scores
add the head's softmax to the prototype softmax sharpened by the number of tasks.

What differs from upstream (the spec's implementation quirks):

- By default the paper's reading: one merge per optimiser step, stored adapters used as stored.
  ``faithful_to_code=true`` reproduces the released code: one more pull of every adapter layer before
  each block of every training forward (Q1); stored adapter j >= 1 pulled towards the mean of stored
  adapters 0..j-1 before each block whenever it runs, so it drifts over evaluations (Q2); the same
  pulls on the current adapter while class statistics are computed (Q3); the prototypes computed with the
  adapters' dropout active (upstream fills them from a network left in train mode); and the drift taken per
  evaluation batch of ``method.batch_size`` samples (upstream's test loader), so it does not depend on the
  protocol's evaluation batch.
- Retrieval runs a stored adapter only when some sample needs it (the same result as running all);
  in faithful mode every stored adapter runs once per batch, as upstream, because that makes it drift.
- Classifier alignment uses ``method.weight_decay``, as the code's parameter group does.
- The optimiser, schedule and batching are the shared loop's (SGD momentum 0.9 + cosine in the YAML).
- Inputs: the paper feeds raw [0, 1] pixels to ViT-B (a backbone config with ``mean``/``std`` null
  does that); the embedded tiny ViT keeps its configured normalisation (mean/std 0.5), as it was
  pre-trained with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.methods.base import ClassifierModel, check_choice, check_range, over_all_classes
from fluxbench.methods.gaussian_alignment import STORAGES, ClassGaussians, align_classifier
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams
from fluxbench.peft import State, attach, average, ema_
from fluxbench.peft.sites import find_tower
from fluxbench.streams.experience import Experience, iterate_batches

ADAPTER_SCALE = 0.1  # fixed in upstream's code
ADAPTER_DROPOUT = 0.1
HEAD_LR_FACTOR = 0.1  # the head trains at 0.1 * lr
DISPERSION_TEMPERATURE = 0.8
STATS_BATCH_FACTOR = 3  # upstream computes class statistics in batches of 3 * batch_size


@dataclass
class MOSHparams(TrainingHparams):
    adapter_momentum: float  # beta of the adapter merge; 0 turns merging off
    reg: float  # weight of the dispersion ("orth") loss
    ffn_num: int  # adapter bottleneck
    ca_lr: float
    crct_epochs: int  # classifier-alignment epochs; 0 turns alignment off
    ca_storage: str  # covariance | variance
    max_iter: int  # self-refined retrieval rounds; 1 = the prototype guess only
    ensemble: bool
    faithful_to_code: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("adapter_momentum", self.adapter_momentum, 0, 1)
        check_range("reg", self.reg, 0)
        check_range("ffn_num", self.ffn_num, 1)
        check_range("ca_lr", self.ca_lr, 0, 10, low_open=True)
        check_range("crct_epochs", self.crct_epochs, 0)
        check_choice("ca_storage", self.ca_storage, STORAGES)
        check_range("max_iter", self.max_iter, 1)
        check_choice("ensemble", self.ensemble, (True, False))
        check_choice("faithful_to_code", self.faithful_to_code, (True, False))


def adapter_config(ffn_num: int) -> dict:
    """The attach() options of MOS's adapters: beside the MLP, on the residual stream, ReLU, scale 0.1, dropout 0.1."""
    return dict(bottleneck=ffn_num, scale=ADAPTER_SCALE, dropout=ADAPTER_DROPOUT, act="relu", position="mlp",
                input="residual")


def dispersion_loss(feats: torch.Tensor, old_means: torch.Tensor | None) -> torch.Tensor:
    """Each row of [old class means; batch features] should be most similar to itself (unnormalised)."""
    m = feats.float() if old_means is None else torch.cat([old_means, feats.float()])
    sim = m @ m.T / DISPERSION_TEMPERATURE
    return F.cross_entropy(sim, torch.arange(len(m), device=m.device))


def class_batches(data: ImageDataset, c: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Class ``c``'s training images in [0, 1], unaugmented (upstream's test transform), in order."""
    index = np.flatnonzero(np.asarray(data.labels) == c)
    x = torch.from_numpy(np.ascontiguousarray(data.images[index])).permute(0, 3, 1, 2).to(device)
    y = torch.zeros(len(index), dtype=torch.long, device=device)
    for xb, _ in iterate_batches(x, y, batch_size, shuffle=False):
        yield xb


@register_method("mos")
class MOS(SupervisedMethod):
    Hparams = MOSHparams

    def __init__(self, hparams: MOSHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        backbone = ctx.build_backbone().to(ctx.device).requires_grad_(False)
        self.adapters = attach(backbone, "adapter", **adapter_config(hparams.ffn_num))
        self.model = ClassifierModel(backbone, ctx.num_classes).to(ctx.device)
        nn.init.trunc_normal_(self.model.head.weight, std=0.02)  # timm's head init, as upstream's ViT head
        nn.init.zeros_(self.model.head.bias)
        self.register_buffer("prototypes", torch.zeros(ctx.num_classes, backbone.num_features, device=ctx.device))
        self.register_buffer("cls2task", torch.full((ctx.num_classes,), -1, dtype=torch.long, device=ctx.device))
        self.originals: list[State] = []  # each task's adapter as it ended (upstream's adapter_list)
        self.snapshots: list[State] = []  # what retrieval runs: the originals, drifted in faithful mode
        self.gaussians = ClassGaussians(hparams.ca_storage)
        self._merge_target: State | None = None  # mean of the stored adapters while a task trains
        self._old_means: torch.Tensor | None = None
        self._pull_target: State | None = None  # faithful mode: pull before every block towards this
        if hparams.faithful_to_code:
            for block in find_tower(backbone).container:
                block.register_forward_pre_hook(self._pull_hook)

    # -- adapter merging -------------------------------------------------------------------------
    def _pull_hook(self, module: nn.Module, args: tuple) -> None:
        """Upstream's in-forward merge: replaces ``.data`` (as the code does) so autograd sees no in-place edit."""
        if self._pull_target is None:
            return
        beta = self.hparams.adapter_momentum
        for name, param in self.adapters.named_parameters():
            param.data = (1 - beta) * param.data + beta * self._pull_target[name]

    @contextmanager
    def _pulling(self, target: State | None) -> Iterator[None]:
        active = self.hparams.faithful_to_code and self.hparams.adapter_momentum > 0 and target is not None
        self._pull_target = target if active else None
        try:
            yield
        finally:
            self._pull_target = None

    # -- training hooks ---------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        new = exp.new_class_range
        self.cls2task[new.start:new.stop] = len(self.originals)
        merging = self.originals and self.hparams.adapter_momentum > 0
        self._merge_target = average(self.originals) if merging else None
        self._old_means = self.gaussians.stacked_means(range(new.start)) if new.start else None

    def trainable_parameters(self) -> list[dict]:
        lr = self.hparams.lr
        return [{"params": list(self.adapters.parameters()), "lr": lr},
                {"params": list(self.model.head.parameters()), "lr": HEAD_LR_FACTOR * lr}]

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, exp: Experience) -> torch.Tensor:
        with self._pulling(self._merge_target):
            feats = self.model.backbone(x)
        old = exp.new_class_range.start
        logits = self.model.head(feats)[:, old:exp.num_seen_classes]  # = upstream's -inf on old columns
        loss = F.cross_entropy(logits, y - old)
        if self.hparams.reg > 0:
            loss = loss + self.hparams.reg * dispersion_loss(feats, self._old_means)
        return loss

    def after_step(self, exp: Experience) -> None:
        if self._merge_target is not None:
            ema_(self.adapters, self._merge_target, 1.0 - self.hparams.adapter_momentum)

    def after_experience(self, exp: Experience) -> None:
        hp = self.hparams
        state = self.adapters.state()
        self.originals.append(state)
        self.snapshots.append({k: v.clone() for k, v in state.items()} if hp.faithful_to_code else state)
        self.model.eval()
        new = exp.new_class_range
        for c in new:
            with self._pulling(self._merge_target):
                self.gaussians.fit(c, self._class_features(exp.train, c))
        if len(self.originals) > 1 and hp.crct_epochs > 0:
            align_classifier(self.model.head, self.gaussians, exp.num_seen_classes, hp.batch_size, hp.crct_epochs,
                             hp.ca_lr, hp.weight_decay)
        if hp.faithful_to_code:
            self.model.train()  # upstream's prototype pass sees the adapters' dropout
        with self.adapters.using(self.originals[0]):
            for c in new:
                self.prototypes[c] = self._class_features(exp.train, c).mean(0)
        self.model.eval()
        self._merge_target = self._old_means = None

    @torch.no_grad()
    def _class_features(self, data: ImageDataset, c: int) -> torch.Tensor:
        batch = STATS_BATCH_FACTOR * self.hparams.batch_size
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            return torch.cat([self.model.backbone(x).float() for x in class_batches(data, c, batch, self.device)])

    # -- inference ------------------------------------------------------------------------------
    def _adapter_features(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """Features of ``x`` with stored adapter ``j`` (in faithful mode it drifts, and the drift is kept)."""
        if not self.hparams.faithful_to_code or j == 0:
            with self.adapters.using(self.snapshots[j]):
                return self.model.backbone(x)
        with self.adapters.using(self.snapshots[j]), self._pulling(average(self.originals[:j])):
            feats = self.model.backbone(x)
            self.snapshots[j] = self.adapters.state()
        return feats

    def _feature_cache(self, x: torch.Tensor) -> Callable[[int], torch.Tensor]:
        cache: dict[int, torch.Tensor] = {}

        def features(j: int) -> torch.Tensor:
            if j not in cache:
                cache[j] = self._adapter_features(x, j).float()
            return cache[j]

        if self.hparams.faithful_to_code:
            for j in range(len(self.snapshots)):
                features(j)
        return features

    @torch.no_grad()
    def retrieve(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task whose adapter made each row's logits, those head logits, prototype cosine logits)."""
        seen = int(self.num_seen)
        features = self._feature_cache(x)
        cos = F.normalize(features(0), dim=1) @ F.normalize(self.prototypes[:seen], dim=1).T
        task = self.cls2task[cos.argmax(1)]
        logits = torch.empty(len(x), seen, device=x.device)
        pending = torch.arange(len(x), device=x.device)
        for step in range(self.hparams.max_iter):
            for j in task[pending].unique().tolist():
                rows = pending[task[pending] == j]
                logits[rows] = self.model.head(features(j)[rows]).float()[:, :seen]
            guess = self.cls2task[logits[pending].argmax(1)]
            moved = guess != task[pending]
            if step == self.hparams.max_iter - 1 or not bool(moved.any()):
                break
            pending = pending[moved]
            task[pending] = guess[moved]
        return task, logits, cos

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores over the seen classes: softmax(head) + softmax(#tasks * cosine), or the head alone."""
        self.model.eval()
        # faithful mode: the stored adapters drift once per evaluation batch, so evaluate in upstream's batches
        step = self.hparams.batch_size if self.hparams.faithful_to_code else len(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            parts = [self.retrieve(x[i:i + step]) for i in range(0, len(x), max(1, step))]
        logits, cos = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        if not self.hparams.ensemble:
            return over_all_classes(logits, self.ctx.num_classes)
        return over_all_classes(logits.softmax(1) + (len(self.snapshots) * cos).softmax(1), self.ctx.num_classes, 0.0)

    # -- state -----------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"originals": self.originals, "gaussians": self.gaussians.state(),
                "snapshots": self.snapshots if self.hparams.faithful_to_code else None}

    def set_extra_state(self, state: dict) -> None:
        def moved(s: State) -> State:
            return {k: v.to(self.device, copy=True) for k, v in s.items()}

        self.originals = [moved(s) for s in state["originals"]]
        drifted = state["snapshots"]
        self.snapshots = list(self.originals) if drifted is None else [moved(s) for s in drifted]
        self.gaussians.load(state["gaussians"], self.device)
