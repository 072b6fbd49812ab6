"""Joint training: the upper bound. At each experience, train on the union of all data seen so far."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluxbench.methods.base import ClassifierModel
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams
from fluxbench.streams.experience import Experience, iterate_batches


@dataclass
class JointHparams(TrainingHparams):
    pass


@register_method("joint")
class Joint(SupervisedMethod):
    """Keeps every past training sample; not a CL method, a reference point."""

    Hparams = JointHparams
    exact_resume = False  # the data seen so far is not part of state_dict()

    def __init__(self, hparams: JointHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        self._seen.append(exp.tensors("train", self.device))
        self._x = torch.cat([x for x, _ in self._seen])
        self._y = torch.cat([y for _, y in self._seen])

    def training_batches(self, exp: Experience):
        return iterate_batches(self._x, self._y, self.hparams.batch_size, transform=exp.train_transform)
