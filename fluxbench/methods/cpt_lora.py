"""LoRA for continual pretraining (spec ``fomo_in_flux.md`` section 6).

Provenance: FoMo-in-Flux ``continual_lib/lora.py`` (github.com/ExplainableML/fomo_in_flux, v1.0): one adapter
of rank ``rank`` (config default 5; the paper reports 4 and 64) and scale 1 on every linear and attention
projection of both towers, trained through the whole stream with no per-task merge. Built on
:mod:`fluxbench.peft.lora` (LoRA, Hu et al. 2022). What differs: the logit scale stays frozen with the base
weights (only adapters train).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fluxbench.methods.base import check_range
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method
from fluxbench.peft.lora import attach_lora
from fluxbench.peft.sites import find_tower

TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")


@dataclass
class CptLoRAHparams(PretrainingHparams):
    lr: float = 1e-4
    rank: int = 5
    scale: float = 1.0


@register_method("cpt_lora")
class ContinualLoRA(PretrainingMethod):
    Hparams = CptLoRAHparams

    def configure(self, model: nn.Module) -> None:
        check_range("rank", self.hparams.rank, 1)
        model.requires_grad_(False)
        self.adapters = nn.ModuleList()  # registered: the adapters are in state_dict() for resume
        for tower_name in ("visual", "text"):
            tower = find_tower(model, tower_name)
            for block in tower.blocks:
                width = block.ln_1.normalized_shape[0]
                attached = attach_lora(block, tower.layout, width, TARGETS, rank=self.hparams.rank,
                                       scale=self.hparams.scale)
                self.adapters.extend(attached.modules.values())
        self.adapters.requires_grad_(True)
