"""Sequential fine-tuning: the lower bound every CL method must beat.

The whole model (backbone and a head over all classes) is trained on each experience in
turn with cross-entropy over the classes seen so far; nothing protects old classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxbench.methods.base import ClassifierModel
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams


@dataclass
class FinetuneHparams(TrainingHparams):
    freeze_backbone: bool


@register_method("finetune")
class Finetune(SupervisedMethod):
    Hparams = FinetuneHparams

    def __init__(self, hparams: FinetuneHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        self.model.backbone.requires_grad_(not hparams.freeze_backbone)
