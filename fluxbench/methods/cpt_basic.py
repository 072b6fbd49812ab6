"""Continual-pretraining baselines of FoMo-in-Flux (spec ``fomo_in_flux.md`` section 6): full fine-tuning and
the locked towers.

Provenance: Roth et al., "A Practitioner's Guide to Continual Multimodal Pretraining" (NeurIPS 2024 D&B),
github.com/ExplainableML/fomo_in_flux (v1.0, commit 3e123d9; read through the forks named in the spec):
``finetune`` trains both towers; ``locked_text`` / ``locked_image`` freeze one tower. What differs: the logit
scale trains in all three (the release trains it with the unlocked parameters); registered as
``cpt_finetune`` so that the supervised ``finetune`` keeps its name.
"""

from __future__ import annotations

from torch import nn

from fluxbench.methods.pretraining import PretrainingMethod
from fluxbench.methods.registry import register_method


@register_method("cpt_finetune")
class ContinualFinetune(PretrainingMethod):
    """Full contrastive fine-tuning of both towers: accumulates most, forgets zero-shot ability."""


@register_method("locked_text")
class LockedText(PretrainingMethod):
    """The text tower frozen (token embedding, transformer, final norm, projection); image tower and scale train."""

    def configure(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        model.text.requires_grad_(False)
        model.text.logit_scale.requires_grad_(True)


@register_method("locked_image")
class LockedImage(PretrainingMethod):
    """The image tower frozen (LiT-style): only the text side and the scale train, so no backward runs through
    the image tower and its activations need not be kept."""

    def configure(self, model: nn.Module) -> None:
        model.requires_grad_(False)
        model.text.requires_grad_(True)
