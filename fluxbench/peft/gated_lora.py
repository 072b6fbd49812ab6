"""CoDyRA's dynamic-rank LoRA: gated LoRA on every linear of both CLIP towers, proximal pruning of the gates.

Provenance: "Adaptive Rank, Reduced Forgetting" (Lu et al., arXiv 2412.01004), github.com/Artificer-AI-Lab/CoDyRA
at ``c1691e4``: ``loralib/codyra.py`` (``codyra_Linear``: ``W x + b + ((x Aᵀ) ⊙ w) Bᵀ``, A Kaiming-uniform,
B = 0, gates w ~ N(0, 1), no scaling) and ``models/codyra.py`` (placement ``qkvoinout`` on all blocks of both
encoders, the proximal step, ``increment_task``). Built on :mod:`fluxbench.peft` (``LoRAPair`` with
``gate="normal"``, ``scale=1``) after :func:`~fluxbench.peft.split_attention.split_attention`; nothing is
copied. What differs: the pruned, gate-scaled factors the code keeps as frozen ``old_lora_*`` are only
counted (``old_rank``), since they are already merged into W and never used again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.handle import PeftHandle, attach
from fluxbench.peft.lora import LoRAPair
from fluxbench.peft.split_attention import split_attention

ALL_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")  # the code's "qkvoinout"
TOWERS = ("visual", "text")  # the code's target_encoder="all"
PROX_MODES = ("faithful_to_code", "soft_threshold")


def attach_gated_lora(model: nn.Module, rank: int = 16, towers: tuple[str, ...] = TOWERS,
                      targets: tuple[str, ...] = ALL_TARGETS, gate: str | None = "normal") -> dict[str, PeftHandle]:
    """Split every attention of ``towers`` into q/k/v/out Linears and put a rank-``rank`` LoRA (gated unless
    ``gate=None``, unscaled) on ``targets`` of every block; one handle per tower."""
    handles = {}
    for tower in towers:
        split_attention(model, tower)
        handles[tower] = attach(model, "lora", tower=tower, targets=targets, rank=rank, scale=1.0, gate=gate)
    return handles


def gated_pairs(handles: dict[str, PeftHandle]) -> Iterator[tuple[str, LoRAPair]]:
    """``(module name, pair)`` of every LoRA module, e.g. ``visual.3.attn.q_proj``."""
    for handle in handles.values():
        for name, lora in handle.modules.items():
            for pair in lora.pairs.values():
                yield name, pair


def soft_threshold(w: torch.Tensor, kappa: float) -> torch.Tensor:
    """The paper's prox of ``kappa * |w|_1``: ``sign(w) * max(|w| - kappa, 0)``."""
    return torch.sign(w) * torch.clamp(w.abs() - kappa, min=0.0)


def soft_threshold_code(w: torch.Tensor, kappa: float) -> torch.Tensor:
    """The official code's three masked assignments, in order: shrink where w > kappa, shrink where w < -kappa,
    then zero where |w| < kappa. A value in (kappa, 2 kappa) is shrunk into (0, kappa) and then zeroed, so the
    dead zone is |w| < 2 kappa, and exactly +-kappa stays as it is."""
    w = w.clone()
    w[w > kappa] -= kappa
    w[w < -kappa] += kappa
    w[w.abs() < kappa] = 0.0
    return w


def prox(w: torch.Tensor, kappa: float, mode: str = "faithful_to_code") -> torch.Tensor:
    if mode not in PROX_MODES:
        raise ConfigError(f"prox mode {mode!r}; use one of {', '.join(PROX_MODES)}")
    return soft_threshold_code(w, kappa) if mode == "faithful_to_code" else soft_threshold(w, kappa)


class KappaSchedule:
    """The threshold per iteration: 0 during the first ``dense_iters`` fraction (no pruning), then the ramp
    ``linspace(0, max_kappa, lambda_num)`` advanced one entry every ``(iterations - dense) / lambda_num`` steps.
    With the defaults (500, 0.5, 50, 0.005) that is every 5 steps, and the thresholds sum to 0.625."""

    def __init__(self, iterations: int, max_kappa: float, dense_iters: float = 0.5, lambda_num: int = 50) -> None:
        if iterations < 1 or lambda_num < 1 or not 0.0 <= dense_iters < 1.0 or max_kappa < 0:
            raise ConfigError(f"kappa schedule: iterations={iterations}, dense_iters={dense_iters}, "
                              f"lambda_num={lambda_num}, max_kappa={max_kappa} are out of range")
        self.dense = int(dense_iters * iterations)
        self.interval = max(1, (iterations - self.dense) // lambda_num)
        self.ramp = torch.linspace(0.0, float(max_kappa), lambda_num).tolist()

    def __call__(self, iteration: int) -> float | None:
        """The threshold after optimiser step ``iteration`` (0-based); None while training densely."""
        if iteration < self.dense:
            return None
        return self.ramp[min((iteration - self.dense) // self.interval, len(self.ramp) - 1)]


@torch.no_grad()
def prox_step(handles: dict[str, PeftHandle], kappa: float, mode: str = "faithful_to_code") -> None:
    """Apply the prox to every gate in place: directly, not scaled by the learning rate, as the code does."""
    for _, pair in gated_pairs(handles):
        if pair.gate is not None:
            pair.gate.copy_(prox(pair.gate, kappa, mode))


def effective_ranks(handles: dict[str, PeftHandle]) -> dict[str, int]:
    """Non-zero gates per LoRA module (the full rank for an ungated LoRA whose B is non-zero)."""
    ranks: dict[str, int] = {}
    for name, pair in gated_pairs(handles):
        if pair.gate is not None:
            used = int(torch.count_nonzero(pair.gate))
        else:
            used = int(torch.count_nonzero(pair.B.abs().sum(0)))
        ranks[name] = ranks.get(name, 0) + used
    return ranks


@torch.no_grad()
def parameter_drift(model: nn.Module, initial: dict[str, torch.Tensor]) -> float:
    """``||theta - theta_0||_F`` over the tensors in ``initial`` (the model's weights before the stream),
    read through any wrappers by their stored names."""
    current = model.state_dict()
    total = 0.0
    for name, start in initial.items():
        total += float((current[name].float() - start.float()).pow(2).sum())
    return total ** 0.5
