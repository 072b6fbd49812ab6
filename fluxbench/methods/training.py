"""The supervised training template most methods share: optimiser, schedule, epochs, hooks.

Hooks, in call order for each experience::

    before_experience(exp)
    for each epoch:
        before_epoch(exp, epoch)
        for each batch:
            loss = training_loss(x, y, exp); backward
            before_optimizer_step(exp)       # the gradients are final: mask or edit them here
            step; after_step(exp)
    after_experience(exp)

A method overrides only what makes it that method (the loss, what is trainable, what
happens after an experience), and keeps a loop as lean as a hand-written one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.methods.base import Method, check_choice, check_finite, check_range
from fluxbench.streams.experience import Experience

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("constant", "cosine", "steplr")


@dataclass
class TrainingHparams:
    """Hyperparameters of the shared loop; defaults live in the method's YAML."""

    lr: float
    epochs: int
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    scheduler: str
    # steplr only: the factor at each milestone and how many milestones (GTEP's grid: decay 0.1/0.3/0.5, 2/3/4
    # milestones at 2k/(2m+1) of the epochs, as PyCIL/PILOT place them); keyword-only, so methods from other
    # packages written before them keep working
    lr_decay: float = field(default=0.1, kw_only=True)
    milestones: int = field(default=2, kw_only=True)

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("momentum", self.momentum, 0, 1, high_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_range("lr_decay", self.lr_decay, 0, 1, low_open=True)
        check_range("milestones", self.milestones, 1)


def _all_on_cuda(params: list) -> bool:
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(p.is_cuda for p in tensors)


def make_optimizer(params: Iterable, hp: TrainingHparams) -> torch.optim.Optimizer:
    """On CUDA the fused kernels (one launch per step instead of one per tensor); elsewhere torch's default,
    so CPU numbers stay those of a plain PyTorch loop."""
    params = list(params)
    fused = {"fused": True} if _all_on_cuda(params) else {}
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, **fused)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, **fused)


def check_compile(backend: str) -> str:
    """``compile=``: "none" (eager) or a ``torch.compile`` backend; one line naming the known ones if not."""
    if backend == "none":
        return backend
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"compile={backend!r} is not a torch.compile backend; use none or one of: {', '.join(known)}")
    return backend


def compiled(fn, backend: str):
    """``fn`` through ``torch.compile`` (the module's parameters and state dict are untouched), or as it is."""
    return fn if backend == "none" else torch.compile(fn, backend=backend)


def steplr_milestones(epochs: int, count: int) -> list[int]:
    """``count`` milestones at 2k/(2 count + 1) of the epochs: 2 -> 2/5, 4/5; 3 -> 2/7, 4/7, 6/7; 4 -> 2/9 .. 8/9."""
    return [round(epochs * 2 * k / (2 * count + 1)) for k in range(1, count + 1)]


def make_scheduler(opt: torch.optim.Optimizer, hp: TrainingHparams) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if hp.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs)
    if hp.scheduler == "steplr":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steplr_milestones(hp.epochs, hp.milestones),
                                                    gamma=hp.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class SupervisedMethod(Method):
    """A method trained by gradient descent on each experience's data."""

    model: nn.Module

    def __init__(self, hparams, ctx) -> None:
        super().__init__(hparams, ctx)
        # classes seen so far: methods whose scores are a softmax over them (LAE, MOS) need it at inference
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))

    # -- hooks -----------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        self.num_seen.fill_(exp.num_seen_classes)

    def before_epoch(self, exp: Experience, epoch: int) -> None:
        pass

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters (or torch param groups, e.g. a head at a lower lr) for the optimiser."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_batches(self, exp: Experience):
        return exp.train_batches(self.hparams.batch_size, self.device)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, exp: Experience) -> torch.Tensor:
        logits = self.model(x)[:, : exp.num_seen_classes]
        return nn.functional.cross_entropy(logits, y)

    def before_optimizer_step(self, exp: Experience) -> None:
        """Between backward and the optimiser step: the gradients the optimiser will consume."""

    def after_step(self, exp: Experience) -> None:
        pass

    def after_experience(self, exp: Experience) -> None:
        pass

    # -- the loop ------------------------------------------------------------------------
    def train_experience(self, exp: Experience) -> None:
        self.before_experience(exp)
        opt = make_optimizer(self.trainable_parameters(), self.hparams)
        sched = make_scheduler(opt, self.hparams)
        training_loss = compiled(self.training_loss, self.ctx.compile)
        self.model.train()
        for epoch in range(self.hparams.epochs):
            self.before_epoch(exp, epoch)
            for x, y in self.training_batches(exp):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
                    loss = training_loss(x, y, exp)
                check_finite(loss, f"experience {exp.index}, epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self.before_optimizer_step(exp)
                opt.step()
                self.after_step(exp)
            sched.step()
        self.after_experience(exp)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ctx.amp):
            return self.model(x).float()  # every class: the protocol masks to the seen ones
