"""Tent: fully test-time adaptation by entropy minimisation on normalisation affine parameters.

Provenance: Wang, Shelhamer, Liu, Olshausen, Darrell, "Tent: Fully Test-Time Adaptation by
Entropy Minimization", ICLR 2021; code github.com/DequanWang/tent (``tent.py``: ``configure_model``,
``collect_params``, ``forward_and_adapt``, ``copy/load_model_and_optimizer``). As there: train mode,
only BatchNorm/LayerNorm/GroupNorm scale and shift are trained, BatchNorm normalises with the test
batch's statistics, ``steps`` updates per batch on the mean entropy, and the logits returned are
those of the last forward pass (with ``steps=1``: before the update); ``episodic`` resets before
every batch. What differs: norm layers are found by type (BN, LN, GN) rather than by name, which
covers the ViT baselines of the ViDA/CoTTA code, and ``params: all`` is the paper's ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxbench.methods.base import check_choice, check_finite
from fluxbench.methods.registry import register_method
from fluxbench.methods.tta_common import (
    TestTimeMethod,
    check_common,
    configure_norm_adaptation,
    entropy,
    make_optimizer,
)


@dataclass
class TentHparams:
    lr: float
    optimizer: str  # adam (CIFAR-10-C) | sgd (ImageNet-C, momentum 0.9)
    momentum: float
    nesterov: bool  # SGD only; the official code's OPTIM.NESTEROV default
    weight_decay: float
    steps: int
    episodic: bool  # reset to the source model before every batch
    params: str  # norm (normalisation affine only) | all (ablation)
    source_model: str

    def __post_init__(self) -> None:
        check_common(self.lr, self.momentum, self.steps)
        check_choice("params", self.params, ("norm", "all"))


@register_method("tent")
class Tent(TestTimeMethod):
    Hparams = TentHparams

    def __init__(self, hparams: TentHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = self.source_model(hparams.source_model)
        params = configure_norm_adaptation(self.model, all_parameters=hparams.params == "all")
        self.optimizer = make_optimizer(params, hparams.optimizer, hparams.lr, hparams.momentum, hparams.weight_decay,
                                        nesterov=hparams.nesterov)
        self.snapshot(self.model, self.optimizer)

    @torch.enable_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.episodic:
            self.reset()
        for _ in range(self.hparams.steps):
            logits = self.forward_and_adapt(x)
        return logits

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The current model, batch statistics included (BN keeps no running statistics), without an update."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            return self.model(x).float()

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            logits = self.model(x)
        loss = entropy(logits.float()).mean()
        check_finite(loss, "tent entropy")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach().float()
