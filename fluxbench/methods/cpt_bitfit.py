"""BitFit and LNFit for continual pretraining (spec ``fomo_in_flux.md`` sections 5-6).

Provenance: FoMo-in-Flux ``continual_lib/bitfit.py`` and ``lnfit.py`` (github.com/ExplainableML/fomo_in_flux,
v1.0): BitFit trains every parameter named ``*bias`` of both towers (``bias_select=all``), LNFit every parameter
of the LayerNorms (``ln_select=all``: the release matches ``ln_`` in the name, i.e. ``ln_pre``, ``ln_1``,
``ln_2``, ``ln_post``, ``ln_final``); everything else, the logit scale included (``tune_logit_scale=False``),
stays frozen. Paper Tab. 4 gives both a memory multiplier of 0.66, so the budget grants them more steps than
full fine-tuning. What differs: LNFit selects LayerNorm modules by type, not by name (the same set on open_clip).
"""

from __future__ import annotations

from torch import nn

from fluxbench.methods.pretraining import PretrainingMethod
from fluxbench.methods.registry import register_method


@register_method("bitfit")
class BitFit(PretrainingMethod):
    """Bias-only tuning (Ben Zaken et al. 2022): attention in-projection, out-projection and MLP biases and the
    LayerNorm shifts."""

    def configure(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(name.rsplit(".", 1)[-1].endswith("bias"))  # ``bias`` and MHA's ``in_proj_bias``


@register_method("lnfit")
class LNFit(PretrainingMethod):
    """LayerNorm-only tuning: the gains and shifts of every LayerNorm of both towers."""

    def configure(self, model: nn.Module) -> None:
        model.requires_grad_(False)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
