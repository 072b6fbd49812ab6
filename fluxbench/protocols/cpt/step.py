"""One optimisation step of continual pretraining and one task of them (spec ``fomo_in_flux.md`` section 4).

The step: the mixed batch through :meth:`PretrainingMethod.loss` (symmetric InfoNCE over the whole batch with
the learnable logit scale), backward, gradient clipping, AdamW, CLIP's logit-scale clamp. AMP: bf16 autocast
on CUDA (no GradScaler: bf16 has float32's range). The optimiser is built afresh per task, its schedule
restarted: so a task boundary is the whole state, and a resumed seed continues exactly. A method that reads its
task's data once more at the task's end (EWC's Fisher) gets it in working-size batches of the update pool.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from fluxbench.methods.base import check_finite
from fluxbench.protocols.cpt.pools import ImageTextPool, MixedBatches, images_to_float
from fluxbench.protocols.cpt.schedule import lr_at


def optimizer_for(method: Any) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; as open_clip's training, gains, biases and the logit scale are not
    weight-decayed."""
    decay, rest = [], []
    for name, p in method.model.named_parameters():
        if p.requires_grad:
            (rest if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": method.hparams.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=method.hparams.lr)


def autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()


def batch_tensors(batch: Mapping[str, ImageTextPool], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed batch as one (images, tokens) pair, pools concatenated in mixture order."""
    parts = list(batch.values())
    images = images_to_float(torch.cat([p.images for p in parts]), device)
    return images, torch.cat([p.tokens for p in parts]).to(device)


def forward_backward(method: Any, images: torch.Tensor, tokens: torch.Tensor, amp: bool) -> torch.Tensor:
    with autocast(images.device, amp):
        loss = method.loss(images, tokens)
    check_finite(loss, f"continual pretraining with {method.name}")
    loss.backward()
    return loss


def train_step(method: Any, opt: torch.optim.Optimizer, images: torch.Tensor, tokens: torch.Tensor,
               grad_clip: float, amp: bool) -> float:
    opt.zero_grad(set_to_none=True)
    loss = forward_backward(method, images, tokens, amp)
    method.before_optimizer_step()  # the gradients are final; masked before clipping, so the clip sees what moves
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    method.after_optimizer_step()
    method.clamp_logit_scale()
    return float(loss.detach())


def end_task_batch_count(samples: int, pool_size: int, batch_size: int) -> int:
    """Batches of the end-of-task pass: ``min(samples, pool_size)`` samples in batches of ``batch_size`` (the
    budget charges each one forward + backward)."""
    return math.ceil(min(samples, pool_size) / batch_size) if samples > 0 else 0


def end_task_batches(pool: ImageTextPool, samples: int, batch_size: int, generator: torch.Generator,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The end-of-task pass: a seeded draw without replacement of ``min(samples, len(pool))`` samples."""
    order = torch.randperm(len(pool), generator=generator)[:min(samples, len(pool))]
    for index in order.split(batch_size):
        yield images_to_float(pool.images[index], device), pool.tokens[index].to(device)


def train_task(method: Any, batches: MixedBatches, steps: int, task: int, opts: Mapping[str, Any],
               device: torch.device, amp: bool) -> float:
    """``steps`` mixed-batch steps of task ``task`` between the method's task hooks; the mean training loss."""
    method.begin_task(task)
    method.train()
    opt = optimizer_for(method)
    total = 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, task, method.hparams.lr, opts["scheduler"])
        images, tokens = batch_tensors(batches.next(), device)
        total += train_step(method, opt, images, tokens, float(opts["grad_clip"]), amp)
    samples = method.end_task_samples()
    if samples > 0:  # after the steps, from the task's own generator: a resumed seed draws the same pass
        method.end_task_pass(end_task_batches(batches.pools["update"], samples, int(opts["batch_size"]),
                                              batches.gen, device))
    method.end_task(task)
    method.eval()
    return total / max(1, steps)
