"""HFT, Half Fine-Tuning (Hui et al., ACL 2025, arXiv 2404.18466).

No official code was released; the per-layer recipe follows the re-implementation in github.com/gucci-j/ssu
(``training/src/utils/model_utils.py::_freeze_hft_parameters``); spec: specs/hft.md. At the start of every
task, half of the parameter categories of every transformer block are frozen (requires_grad off: no
gradient, no optimiser state, no weight decay) and the other half is fine-tuned with a fresh optimiser;
frozen tensors keep their values (they are not reset). The draw uses a seed that depends on the task.

ViT mapping (spec section 5, :mod:`fluxbench.methods.half_selection`): per block, 2 of {q, k, v, proj}
(the fused qkv split into three Linears), 1 of {fc1, fc2}, 1 of {norm1, norm2}; biases follow their
weights; embeddings and head stay trainable unless ``freeze_embeddings_and_head``. Options (ablations,
not the paper's default): ``reselect=epoch`` draws a new mask every epoch, ``reselect=static`` keeps
the first task's mask for the whole stream. ``cost()`` reports the realised trainable fraction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from fluxbench.methods.base import ClassifierModel, check_choice
from fluxbench.methods.half_selection import HalfFrozenMask, timm_categories
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams
from fluxbench.streams.experience import Experience

RESELECT = ("task", "epoch", "static")
VIT_PATH = "backbone.model"  # the timm ViT inside ClassifierModel


@dataclass
class HftHparams(TrainingHparams):
    reselect: str  # task (paper) | epoch | static
    split_qkv: bool  # {q, k, v, proj}: freeze 2 of 4; false: {qkv, proj}, freeze 1 of 2
    freeze_embeddings_and_head: bool  # also draw half of {patch_embed, pos_embed} and of {norm, head}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("reselect", self.reselect, RESELECT)


@register_method("hft")
class HalfFineTuning(HalfFrozenMask, SupervisedMethod):
    Hparams = HftHparams

    def __init__(self, hparams: HftHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        self.init_mask(self.model, timm_categories(self.model, VIT_PATH, hparams.split_qkv,
                                                   hparams.freeze_embeddings_and_head))

    # -- the mask ------------------------------------------------------------------------
    def mask_seed(self, task: int, epoch: int = 0) -> int:
        if self.hparams.reselect == "static":
            task = epoch = 0
        return int(self.base_seed) + 1009 * task + epoch

    def select(self, task: int, epoch: int = 0) -> None:
        """Draw the mask for (task, epoch) and apply it."""
        self.apply_mask(self.mask_seed(task, epoch))

    def cost(self) -> dict[str, float]:
        return {"hft_trainable_fraction": self.trainable_fraction(),
                "hft_trainable_fraction_blocks": self.trainable_fraction(blocks_only=True)}

    # -- hooks ----------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        self.select(exp.index)

    def before_epoch(self, exp: Experience, epoch: int) -> None:
        if self.hparams.reselect == "epoch" and epoch > 0:
            self.select(exp.index, epoch)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        if self.hparams.reselect == "epoch":
            # the mask changes inside the experience: every tensor is in the optimiser, and the frozen ones
            # (no .grad) are skipped by its step: no update, no decay, no new state
            return list(self.model.parameters())
        return [p for p in self.model.parameters() if p.requires_grad]
