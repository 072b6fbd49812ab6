"""Prototype classifier on frozen pre-trained features (SimpleCIL).

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability
and Adaptivity are All You Need" (IJCV 2024); upstream: LAMDA-PILOT ``models/simplecil.py``.
Each class is the mean of its training features; prediction is the cosine similarity to
each prototype. No gradient step is ever taken, so there is nothing to forget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.methods.base import Method, check_range
from fluxbench.methods.registry import register_method
from fluxbench.streams.experience import Experience


@dataclass
class PrototypeHparams:
    batch_size: int

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)


@register_method("prototype")
class Prototype(Method):
    Hparams = PrototypeHparams

    def __init__(self, hparams: PrototypeHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.backbone = ctx.build_backbone().to(ctx.device).eval().requires_grad_(False)
        self.register_buffer("prototypes", torch.zeros(ctx.num_classes, self.backbone.num_features, device=ctx.device))

    @torch.no_grad()
    def train_experience(self, exp: Experience) -> None:
        sums = torch.zeros_like(self.prototypes)
        counts = torch.zeros(len(self.prototypes), device=self.device)
        for x, y in exp.train_batches(self.hparams.batch_size, self.device, shuffle=False, augment=False):
            feats = self.backbone(x)
            sums.index_add_(0, y, feats)
            counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
        new = exp.new_class_range
        self.prototypes[new.start:new.stop] = sums[new.start:new.stop] / counts[new.start:new.stop, None].clamp_min(1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        feats = nn.functional.normalize(self.backbone(x), dim=1)
        protos = nn.functional.normalize(self.prototypes, dim=1)  # unseen classes: zero, a cosine of 0
        return feats @ protos.T
