"""A linear probe on the frozen backbone: a whole fluxbench method in a few lines, outside fluxbench."""

from dataclasses import dataclass
from pathlib import Path

from fluxbench.methods.base import ClassifierModel
from fluxbench.methods.training import SupervisedMethod, TrainingHparams


@dataclass
class LinearProbeHparams(TrainingHparams):
    pass


class LinearProbe(SupervisedMethod):
    Hparams = LinearProbeHparams
    config_file = Path(__file__).with_name("linear_probe.yaml")

    def __init__(self, hparams, ctx):
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        self.model.backbone.requires_grad_(False)
