"""EWC and SI for continual pretraining: a quadratic pull toward the previous task's weights (spec
``fomo_in_flux.md`` sections 5-6).

Provenance: FoMo-in-Flux ``continual_lib/ewc.py`` and ``si.py`` (github.com/ExplainableML/fomo_in_flux, v1.0,
commit 3e123d9; read through the fork pseudope/fomo_in_flux), after mammoth's; Kirkpatrick et al., PNAS 2017
(EWC) and Zenke et al., ICML 2017 (SI). Both penalise every trainable parameter of both towers and the logit
scale, with ``theta*`` the weights at the end of the previous task:

- ``cpt_ewc``: loss = InfoNCE + ``ewc_lambda``/2 * sum F (theta - theta*)^2. At the end of each task the
  diagonal Fisher is the mean over batches of the squared batch gradient of the contrastive loss (the release's
  ``fim_avg=batch``) on at most ``fisher_samples`` samples of the task's update pool, at the working batch size;
  F <- ``gamma`` F + F_task. Defaults: lambda 1, gamma 1, 50,000 samples.
- ``cpt_si``: loss = InfoNCE + ``si_c`` * sum Omega (theta - theta*)^2; per step the path integral
  omega += -g * (theta_after - theta_before) with g the (clipped) gradient the optimiser applied; at the end of
  each task Omega += omega / ((theta - theta*)^2 + ``xi``), then omega <- 0. Defaults: c 0.5, xi 1.

Budget: the Fisher pass costs a forward + backward per batch once per task, the penalties and the path integral
their elementwise FLOPs every step, and the anchor, Fisher / importances and SI's accumulators count as the
step's memory (``protocols/cpt/budget.py``). What differs: the release charges EWC's Fisher to every step (Tab. 4:
14 steps per task at T=20); here it is charged once per task, as it runs. SI's omega is the path integral of the
actual AdamW update, where the release accumulates lr * g^2 (the SGD form), and negative path integrals are
clipped to 0 so that no importance pushes a weight away from its anchor. The penalty is computed from task 1 on
(zero importances: a zero pull), so the step the budget measures is the one that runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.methods.base import check_range
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method

# elementwise FLOPs per penalised element: the penalty's forward (sub, square, multiply, sum) and backward (the
# chain through square and weight, added into .grad); SI's path integral (difference, product, accumulate)
PENALTY_FLOPS, PATH_FLOPS = 8, 3


@dataclass
class CptEwcHparams(PretrainingHparams):
    ewc_lambda: float = 1.0
    gamma: float = 1.0  # decay of the earlier tasks' Fisher before this task's is added
    fisher_samples: int = 50_000

    def __post_init__(self) -> None:
        check_range("ewc_lambda", self.ewc_lambda, 0)
        check_range("gamma", self.gamma, 0, 1)
        check_range("fisher_samples", self.fisher_samples, 1)


@dataclass
class CptSiHparams(PretrainingHparams):
    si_c: float = 0.5
    xi: float = 1.0  # damping: keeps Omega finite where a weight barely moved

    def __post_init__(self) -> None:
        check_range("si_c", self.si_c, 0)
        check_range("xi", self.xi, 0, low_open=True)


class AnchoredMethod(PretrainingMethod, ABC):
    """Full fine-tuning with ``scale * sum importance (theta - anchor)^2`` over the trainable parameters."""

    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.pulled = [name for name, p in model.named_parameters() if p.requires_grad]
        self.state_buffers("anchor", lambda p: p.detach().clone())
        self.state_buffers("importance", torch.zeros_like)

    def state_buffers(self, kind: str, init: Callable[[torch.Tensor], torch.Tensor], persistent: bool = True) -> None:
        # buffers, not a list of tensors: they follow .to(device), deepcopy and state_dict() (exact resume)
        for k, name in enumerate(self.pulled):
            self.register_buffer(f"{kind}_{k}", init(self.model.get_parameter(name)), persistent=persistent)

    def tensors(self, kind: str) -> list[torch.Tensor]:
        return [getattr(self, f"{kind}_{k}") for k in range(len(self.pulled))]

    def params(self) -> list[nn.Parameter]:
        return [self.model.get_parameter(name) for name in self.pulled]

    @abstractmethod
    def scale(self) -> float:
        """The penalty's weight (EWC: lambda / 2, SI: c)."""

    def penalty(self) -> torch.Tensor:
        terms = [(w * (p - a).pow(2)).sum() for p, w, a in zip(self.params(), self.tensors("importance"),
                                                                self.tensors("anchor"))]
        return self.scale() * torch.stack(terms).sum()

    def penalised_elements(self) -> int:
        return sum(p.numel() for p in self.params())

    def step_extra_flops(self) -> float:
        return float(PENALTY_FLOPS * self.penalised_elements())

    def step_state(self) -> list[torch.Tensor]:
        return [*self.tensors("anchor"), *self.tensors("importance")]

    @torch.no_grad()
    def set_anchor(self) -> None:
        for p, a in zip(self.params(), self.tensors("anchor")):
            a.copy_(p)

    def task_metrics(self) -> dict[str, float]:
        importance = self.tensors("importance")
        return {f"{self.name}_importance_mean": float(sum(w.sum() for w in importance) / self.penalised_elements())}


@register_method("cpt_ewc")
class ContinualEwc(AnchoredMethod):
    Hparams = CptEwcHparams

    def scale(self) -> float:
        return self.hparams.ewc_lambda / 2

    def end_task_samples(self) -> int:
        return self.hparams.fisher_samples

    def end_task_pass(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The task's diagonal Fisher, folded into the running one; the anchor becomes the current weights."""
        params = self.params()
        fisher, count = [torch.zeros_like(p) for p in params], 0
        for images, tokens in batches:
            self.model.zero_grad(set_to_none=True)
            amp = self.ctx.amp and images.device.type == "cuda"  # as the protocol's steps: bf16 on CUDA only
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = self.contrastive_loss(images, tokens)
            loss.backward()
            with torch.no_grad():
                for f, p in zip(fisher, params):
                    if p.grad is not None:
                        f.add_(p.grad.float().pow(2))
            count += 1
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for running, f in zip(self.tensors("importance"), fisher):
                running.mul_(self.hparams.gamma).add_(f / max(1, count))
        self.set_anchor()

    def end_task_flops(self, pass_batches: int) -> float:
        return float((2 * pass_batches + 3) * self.penalised_elements())  # square + add per batch; mean and fold


@register_method("cpt_si")
class ContinualSi(AnchoredMethod):
    Hparams = CptSiHparams

    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        self.state_buffers("omega", torch.zeros_like)  # this task's path integral
        self.state_buffers("before", torch.zeros_like, persistent=False)  # the weights before the step

    def scale(self) -> float:
        return self.hparams.si_c

    def step_extra_flops(self) -> float:
        return float((PENALTY_FLOPS + PATH_FLOPS) * self.penalised_elements())

    def step_state(self) -> list[torch.Tensor]:
        return [*super().step_state(), *self.tensors("omega"), *self.tensors("before")]

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        for p, b in zip(self.params(), self.tensors("before")):
            b.copy_(p)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        # the gradient is the clipped one the optimiser applied (clipping works in place on .grad)
        for p, b, w in zip(self.params(), self.tensors("before"), self.tensors("omega")):
            if p.grad is not None:
                w.sub_(p.grad.float() * (p - b))

    @torch.no_grad()
    def end_task(self, index: int) -> None:
        for p, a, w, big in zip(self.params(), self.tensors("anchor"), self.tensors("omega"),
                                self.tensors("importance")):
            big.add_(w.clamp(min=0) / ((p - a).pow(2) + self.hparams.xi))
            w.zero_()
        self.set_anchor()

    def end_task_flops(self, pass_batches: int) -> float:
        return float(6 * self.penalised_elements())  # clip, difference, square, damping, divide, accumulate
