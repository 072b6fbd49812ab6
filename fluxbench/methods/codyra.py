"""CoDyRA: continual dynamic rank-selective LoRA for CLIP.

Paper: Lu et al., "Adaptive Rank, Reduced Forgetting: Knowledge Retention in Continual Learning
Vision-Language Models with Dynamic Rank-Selective LoRA" (arXiv 2412.01004). Code:
github.com/Artificer-AI-Lab/CoDyRA at ``c1691e4`` (``models/codyra.py``, ``loralib/codyra.py``, defaults from
``runner_codyra.sh``). Spec: ``shared/specs/codyra.md``.

Gated LoRA (rank 16, gates N(0, 1), unscaled) on q/k/v/out/ffn-in/ffn-out of every block of both towers
(:mod:`fluxbench.peft.gated_lora`); AdamW 5e-4, betas (0.9, 0.9999), cosine over 500 steps per task; after
each step in the second half, the gates are soft-thresholded with the ramped kappa (max 0.005); at the end of
each task the surviving rank is merged into the weights and a fresh LoRA is started.
What differs: the code merges at the start of the next task; merging at the end of this one gives the same
model for evaluation (a fresh LoRA adds nothing) and lets ranks and drift be read per task.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fluxbench.methods.base import MethodContext, check_choice, check_range
from fluxbench.methods.clip_tuning import ClipTuner, ClipTuningHparams
from fluxbench.methods.registry import register_method
from fluxbench.peft.gated_lora import (
    ALL_TARGETS,
    PROX_MODES,
    TOWERS,
    KappaSchedule,
    attach_gated_lora,
    effective_ranks,
    parameter_drift,
    prox_step,
)

TOWER_CHOICES = {"all": TOWERS, "vision": ("visual",), "text": ("text",)}
TARGET_CHOICES = {"qkvoinout": ALL_TARGETS, "qkvo": ("q", "k", "v", "proj")}


@dataclass
class LoRAHparams(ClipTuningHparams):
    rank: int = 16
    target_encoder: str = "all"  # all | vision | text
    target_modules: str = "qkvoinout"  # qkvoinout | qkvo


class MergedLoRA(ClipTuner):
    """LoRA on the chosen CLIP linears, merged into the weights and restarted after every task."""

    def __init__(self, hparams: LoRAHparams, ctx: MethodContext) -> None:
        super().__init__(hparams, ctx)
        check_range("rank", hparams.rank, 1)
        check_choice("target_encoder", hparams.target_encoder, TOWER_CHOICES)
        check_choice("target_modules", hparams.target_modules, TARGET_CHOICES)
        self.handles = attach_gated_lora(self.clip, hparams.rank, TOWER_CHOICES[hparams.target_encoder],
                                         TARGET_CHOICES[hparams.target_modules], gate=self.gate_init(hparams))
        # theta_0: the backbone's own weights (LoRA factors excluded), not in state_dict: rebuilt identically
        self._theta0 = {k: v.detach().clone() for k, v in self.clip.state_dict().items() if ".peft." not in k}
        self._last: dict[str, float] = {}

    def gate_init(self, hparams: LoRAHparams) -> str | None:
        return None  # plain LoRA: no gates

    def trainable(self) -> list[nn.Parameter]:
        return [p for h in self.handles.values() for p in h.parameters()]

    def end_task(self) -> None:
        ranks = effective_ranks(self.handles)
        for handle in self.handles.values():
            handle.merge_and_restart()
        self._last = {f"rank/{name}": float(r) for name, r in ranks.items()}
        self._last["effective_rank_mean"] = sum(ranks.values()) / len(ranks)
        self._last["drift"] = parameter_drift(self.clip, self._theta0)

    def diagnostics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class CodyraHparams(LoRAHparams):
    max_kappa: float = 0.005
    dense_iters: float = 0.5  # fraction of the steps trained densely before pruning starts
    lambda_num: int = 50  # entries of the kappa ramp
    prox: str = "faithful_to_code"  # faithful_to_code (dead zone 2 kappa) | soft_threshold (the paper's T_kappa)
    gate_init: str = "normal"  # normal (N(0, 1), the code) | ones (its commented alternative)


@register_method("codyra")
class CoDyRA(MergedLoRA):
    Hparams = CodyraHparams

    def __init__(self, hparams: CodyraHparams, ctx: MethodContext) -> None:
        check_choice("prox", hparams.prox, PROX_MODES)
        check_choice("gate_init", hparams.gate_init, ("normal", "ones"))
        super().__init__(hparams, ctx)
        self.schedule = KappaSchedule(hparams.iterations, hparams.max_kappa, hparams.dense_iters, hparams.lambda_num)

    def gate_init(self, hparams: CodyraHparams) -> str | None:
        return hparams.gate_init

    def after_step(self, iteration: int) -> None:
        kappa = self.schedule(iteration)
        if kappa is not None:
            prox_step(self.handles, kappa, self.hparams.prox)


@register_method("clip_lora")
class ClipLoRA(MergedLoRA):
    """The plain-LoRA baseline of the paper's tables (r = 16, ungated, merged per task)."""

    Hparams = LoRAHparams

