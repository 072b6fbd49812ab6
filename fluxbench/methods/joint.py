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
    """Not a CL method, a reference point. The data seen so far is read from the stream (``exp.earlier``), not
    kept in the method, so the state is the model alone and an interrupted seed resumes exactly."""

    Hparams = JointHparams

    def __init__(self, hparams: JointHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)

    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        parts = [e.uint8_tensors("train", self.device) for e in (*exp.earlier, exp)]  # uint8: 4x less than floats
        self._union = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def after_experience(self, exp: Experience) -> None:
        del self._union

    def training_batches(self, exp: Experience):
        return iterate_batches(*self._union, self.hparams.batch_size, transform=exp.train_transform)
