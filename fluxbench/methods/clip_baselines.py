"""The reference points CoDyRA is reported against on the same CLIP stream: zero-shot CLIP and full fine-tuning.

Zero-shot CLIP never trains (the Transfer row every continual method is compared with). Full fine-tuning
trains every weight of both towers with the shared CLIP step (:mod:`fluxbench.methods.clip_tuning`), the
paper's upper bound on plasticity and lower bound on retention; ``logit_scale`` stays frozen as in CoDyRA.
The plain-LoRA baseline (r = 16, merged per task) lives beside CoDyRA in :mod:`fluxbench.methods.codyra`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fluxbench.methods.base import MethodContext
from fluxbench.methods.clip_tuning import ClipMethod, ClipTuner, ClipTuningHparams
from fluxbench.methods.registry import register_method
from fluxbench.peft.gated_lora import parameter_drift
from fluxbench.streams.experience import Experience


@register_method("clip_zeroshot")
class ClipZeroShot(ClipMethod):
    """The pre-trained CLIP as it is: every task's data is ignored."""

    Hparams: ClassVar[type] = dataclass(type("ClipZeroShotHparams", (), {}))

    def train_experience(self, exp: Experience) -> None:
        return None


@dataclass
class ClipFinetuneHparams(ClipTuningHparams):
    lr: float = 1e-5


@register_method("clip_finetune")
class ClipFinetune(ClipTuner):
    Hparams = ClipFinetuneHparams

    def __init__(self, hparams: ClipFinetuneHparams, ctx: MethodContext) -> None:
        super().__init__(hparams, ctx)
        self._theta0 = {k: v.detach().clone() for k, v in self.clip.state_dict().items()}
        self._last: dict[str, float] = {}

    def trainable(self) -> list[nn.Parameter]:
        params = [p for n, p in self.clip.named_parameters() if not n.endswith("logit_scale")]
        for p in params:
            p.requires_grad_(True)
        return params

    def end_task(self) -> None:
        self._last = {"drift": parameter_drift(self.clip, self._theta0)}

    def diagnostics(self) -> dict[str, float]:
        return dict(self._last)
