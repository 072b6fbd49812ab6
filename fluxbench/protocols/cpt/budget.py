"""The compute budget of continual pretraining: memory-adjusted FLOPs (spec ``fomo_in_flux.md`` section 5).

- per-step FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around one forward + backward of the method's loss
  at the working batch size (the counts are deterministic, so one step stands for the spec's average of 3; the
  optimiser's elementwise update is not a counted op, as in the release's measurement), plus the elementwise work
  a method declares per step (``step_extra_flops``: EWC's and SI's penalties, SI's path integral);
- memory multiplier, against full fine-tuning on the same batch: on CUDA the peak allocated memory of one whole
  step (optimiser included); on CPU a stated proxy, the bytes of every parameter + 3x the trainable ones
  (gradient and AdamW's two moments) + the activations autograd saves for backward + the tensors a method keeps
  for every step (``step_state``: EWC's Fisher and anchor, SI's importances);
- end of task, charged once per task: a forward + backward per batch of the method's end-of-task pass over the
  task's update pool (EWC's Fisher: ``min(samples, pool)`` samples at the working batch size, the pool of task 1
  standing for every task) plus the elementwise work of ``end_task_flops``;
- MAFs per step = FLOPs x multiplier; budget = full fine-tuning's ``steps_per_task`` x its MAFs (or
  ``gmafs_per_task``); a method's steps per task = floor((budget - its end-of-task MAFs) / its MAFs per step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fluxbench.errors import ConfigError
from fluxbench.protocols.cpt.step import end_task_batch_count, forward_backward, optimizer_for

CPU_PROXY = ("cpu proxy: parameter bytes + 3 x trainable bytes (grad, AdamW moments) + saved-activation bytes"
             " + bytes of the per-step method state (EWC, SI)")
CUDA_PEAK = "cuda peak allocated memory of one step"


@dataclass(frozen=True)
class Budget:
    gflops_per_step: float
    memory_multiplier: float
    mafs_per_step: float  # GFLOPs x multiplier
    ft_gflops_per_step: float
    budget_gmafs_per_task: float
    end_task_batches: int  # batches of the end-of-task pass (EWC's Fisher), each a forward + backward
    end_task_gmafs: float
    steps_per_task: int

    def metrics(self) -> dict[str, float]:
        return {f"budget.{k}": float(v) for k, v in asdict(self).items()}


def pass_flops(method: Any, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """FLOPs FlopCounterMode counts in one forward + backward of ``method``'s loss, on a copy (the method is not
    touched): its matrix products, which a penalty does not add to."""
    probe = copy.deepcopy(method).train()
    with FlopCounterMode(display=False) as counter:
        forward_backward(probe, images, tokens, amp=False)
    return float(counter.get_total_flops())


def step_flops(method: Any, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """FLOPs of one step: the counted forward + backward and the method's declared elementwise work."""
    return pass_flops(method, images, tokens) + float(method.step_extra_flops())


def step_memory(method: Any, images: torch.Tensor, tokens: torch.Tensor, amp: bool) -> float:
    """Bytes one training step of ``method`` needs: the CUDA peak, or the CPU proxy (module docstring)."""
    probe = copy.deepcopy(method).train()
    # copies a method keeps beside the trained model (a merge's running weights) sit outside the step: the
    # release counts merges at multiplier 1
    extra = _bytes(probe.parameters()) - _bytes(probe.model.parameters())
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        opt = optimizer_for(probe)
        forward_backward(probe, images, tokens, amp)
        opt.step()
        torch.cuda.synchronize(images.device)
        return float(torch.cuda.max_memory_allocated(images.device)) - extra
    saved = [0]
    state = probe.step_state()
    counted = {t.data_ptr() for t in state}  # a penalty saves its importances for backward: counted once

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in counted:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_backward(probe, images, tokens, amp=False)
    trainable = _bytes(p for p in probe.model.parameters() if p.requires_grad)
    return float(_bytes(probe.model.parameters()) + 3 * trainable + saved[0] + _bytes(state))


def _bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def derive_budget(method: Any, reference: Any, images: torch.Tensor, tokens: torch.Tensor,
                  opts: Mapping[str, Any], amp: bool, pool_size: int) -> Budget:
    """``method``'s steps per task under full fine-tuning's (``reference``'s) budget, and how they follow;
    ``pool_size``: the samples of task 1's update pool (what an end-of-task pass may read)."""
    ft_flops, counted = step_flops(reference, images, tokens), pass_flops(method, images, tokens)
    flops = counted + float(method.step_extra_flops())
    mult = step_memory(method, images, tokens, amp) / step_memory(reference, images, tokens, amp)
    maf = flops * mult / 1e9
    explicit = opts.get("gmafs_per_task")
    ft_steps = int(opts.get("steps_per_task", 0))
    budget = float(explicit) if explicit is not None else ft_steps * ft_flops / 1e9
    batches = end_task_batch_count(method.end_task_samples(), pool_size, len(images))
    end = (batches * counted + float(method.end_task_flops(batches))) * mult / 1e9
    steps = math.floor((budget - end) / maf) if maf > 0 else 0
    if steps < 1:
        given = (f"protocol.budget.gmafs_per_task={explicit}" if explicit is not None
                 else f"protocol.budget.steps_per_task={ft_steps}")
        raise ConfigError(f"{given} is too small for one step of {method.name}: a step costs {maf:.4g} GMAFs "
                          f"({flops / 1e9:.4g} GFLOPs x memory {mult:.3f}) and the task's end {end:.4g}; "
                          f"the budget is {budget:.4g} GMAFs per task")
    return Budget(flops / 1e9, mult, maf, ft_flops / 1e9, budget, batches, end, steps)
