"""The contract of continual-pretraining methods (``kind = "pretraining"``, ``protocol=continual_pretraining``).

FoMo-in-Flux (spec ``fomo_in_flux.md`` sections 4-6) updates a CLIP with contrastive image-text training,
task after task, under a compute budget. The protocol owns the data mixture, the optimiser (AdamW over
:meth:`trainable_parameters`, built afresh per task with the method's ``lr`` and ``weight_decay``), the
learning-rate schedule, clipping, AMP, the budget (from the cost hooks below) and evaluation. A method says what
is its own, and the protocol calls, per task ``t``::

    method.begin_task(t)
    for each of the task's steps:   loss = method.loss(images, tokens)   # images in [0, 1], NCHW
                                    backward; method.before_optimizer_step(); clip; AdamW step;
                                    method.after_optimizer_step()
    method.end_task_pass(batches)                                        # if end_task_samples() > 0: a Fisher
    method.end_task(t)                                                   # merges, anchors, ...
    method.task_metrics()                                                # logged as step.<key> of task t
    method.evaluation_model()                                            # what is scored after task t

The model is CLIP as :class:`fluxbench.backbones.clip.ClipBackbone` holds it (``model`` is the visual tower,
``model.text`` the text side with the learnable ``logit_scale``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.errors import ConfigError
from fluxbench.methods.base import Method, MethodContext, check_range


@dataclass
class PretrainingHparams:
    lr: float = 1e-5
    weight_decay: float = 0.2


class PretrainingMethod(Method):
    """Full contrastive fine-tuning of both towers and the logit scale; subclasses narrow or extend it."""

    kind: ClassVar[str] = "pretraining"
    Hparams: ClassVar[type] = PretrainingHparams

    def __init__(self, hparams: Any, ctx: MethodContext) -> None:
        super().__init__(hparams, ctx)
        check_range("lr", hparams.lr, 0, low_open=True)
        check_range("weight_decay", hparams.weight_decay, 0)
        self.model = ctx.build_backbone()
        if getattr(self.model, "text", None) is None or not hasattr(self.model, "encode_text"):
            raise ConfigError(f"method {self.name!r} needs a CLIP backbone with a text tower (backbone=tiny_clip or "
                              f"kind open_clip); got {type(self.model).__name__}")
        self.configure(self.model)
        from open_clip.loss import ClipLoss  # here, not at import: open_clip costs seconds in every process

        self.loss_fn = ClipLoss()
        self.to(ctx.device)  # the model and any copy a method keeps (a merge's running weights)

    def configure(self, model: nn.Module) -> None:
        """Choose what trains (``requires_grad``); attach PEFT modules. Default: everything."""
        model.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.tokenizer(list(texts))

    def features(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.normalize(self.model(images), dim=-1)
        text = F.normalize(self.model.text.encode_text(tokens), dim=-1)
        return image, text

    def contrastive_loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the whole (mixed) batch with the learnable logit scale."""
        image, text = self.features(images, tokens)
        return self.loss_fn(image.float(), text.float(), self.model.text.logit_scale.exp())

    def loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The step's loss: :meth:`contrastive_loss` plus :meth:`penalty`."""
        return self.contrastive_loss(images, tokens) + self.penalty()

    def penalty(self) -> torch.Tensor | float:
        """A regulariser added to the contrastive loss (EWC, SI); none by default."""
        return 0.0

    def begin_task(self, index: int) -> None:
        """Called before task ``index`` (0-based) trains."""

    def before_optimizer_step(self) -> None:
        """Called after each step's backward, before clipping and the optimiser step (gradient masks go here)."""

    def after_optimizer_step(self) -> None:
        """Called right after each optimiser step."""

    def end_task(self, index: int) -> None:
        """Called after task ``index`` trained, before it is evaluated (merges happen here)."""

    def task_metrics(self) -> dict[str, float]:
        """Numbers about the task just trained, logged by the protocol as ``step.<key>``; none by default."""
        return {}

    def end_task_samples(self) -> int:
        """Samples of the task's update pool that :meth:`end_task_pass` reads (EWC's Fisher); 0: no pass."""
        return 0

    def end_task_pass(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called after the task's last step, before :meth:`end_task`, with (images, tokens) batches of the working
        size drawn from the task's update pool (``min(end_task_samples(), pool size)`` samples), when
        :meth:`end_task_samples` is positive. The budget charges each batch one forward + backward."""

    def end_task_flops(self, pass_batches: int) -> float:
        """FLOPs of :meth:`end_task_pass` and :meth:`end_task` beyond the forward + backward of each of the
        ``pass_batches`` batches (elementwise work FlopCounterMode does not count), charged once per task."""
        return 0.0

    def step_extra_flops(self) -> float:
        """Elementwise FLOPs of every step that FlopCounterMode does not count (a penalty's, SI's path
        integral); the budget adds them to the counted per-step FLOPs."""
        return 0.0

    def step_state(self) -> list[torch.Tensor]:
        """Tensors beside the model that every step reads (EWC's Fisher and anchor...): the CPU memory proxy of
        the budget counts their bytes (on CUDA the measured peak holds them)."""
        return []

    def evaluation_model(self) -> nn.Module:
        """The CLIP scored after a task (a merge may score another set of weights than it trains)."""
        return self.model

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """CLIP's clamp: the temperature never drops below 1/100."""
        self.model.text.logit_scale.clamp_(0, 4.6052)
