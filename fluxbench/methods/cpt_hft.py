"""HFT, Half Fine-Tuning, for continual pretraining: half of every CLIP block's categories frozen per task.

Provenance: Hui et al., ACL 2025 (arXiv 2404.18466), recipe of github.com/gucci-j/ssu; spec specs/hft.md,
section 5 for CLIP. At the start of every task, per ResidualAttentionBlock of each tower, 2 of {q, k, v,
out_proj} (q/k/v are the thirds of ``in_proj_weight``, made separately freezable by
:func:`~fluxbench.methods.half_selection.split_in_projection`), 1 of {c_fc, c_proj} and 1 of {ln_1, ln_2} are
frozen (``requires_grad`` off: no gradient, no AdamW state, no decay); biases follow their weights. The
protocol builds a fresh AdamW over the trainable half each task. Embeddings, projections, final norms and the
logit scale stay trainable (the paper's default). The draw is seeded per task from a seed drawn at construction.

The realised trainable fraction is logged per task (``step.hft_trainable_fraction_blocks``, of the blocks'
parameters: 45-55 %) and of the whole model (``step.hft_trainable_fraction``: far higher on the tiny CLIP, whose
token embedding is 90 % of it). ``split_qkv=false`` uses {in_proj, out_proj} as the two attention categories
(then a block's trainable share is 3/8 or 5/8 on the tiny CLIP: not the 45-55 % band). ``reselect=static``
keeps task 1's mask for the whole stream (an ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fluxbench.methods.base import check_choice
from fluxbench.methods.half_selection import HalfFrozenMask, open_clip_categories
from fluxbench.methods.pretraining import PretrainingHparams, PretrainingMethod
from fluxbench.methods.registry import register_method

RESELECT = ("task", "static")  # a task is a number of steps here: no epochs to re-draw at


@dataclass
class CptHftHparams(PretrainingHparams):
    reselect: str = "task"
    split_qkv: bool = True

    def __post_init__(self) -> None:
        check_choice("reselect", self.reselect, RESELECT)


@register_method("cpt_hft")
class ContinualHalfFineTuning(HalfFrozenMask, PretrainingMethod):
    Hparams = CptHftHparams

    def configure(self, model: nn.Module) -> None:
        self.init_mask(model, open_clip_categories(model, self.hparams.split_qkv))
        self.select(0)  # the budget is measured before task 1: on the half that trains

    def mask_seed(self, task: int) -> int:
        return int(self.base_seed) + 1009 * (0 if self.hparams.reselect == "static" else task)

    def select(self, task: int) -> None:
        self.apply_mask(self.mask_seed(task))

    def begin_task(self, index: int) -> None:
        self.select(index)

    def task_metrics(self) -> dict[str, float]:
        return {"hft_trainable_fraction": self.trainable_fraction(),
                "hft_trainable_fraction_blocks": self.trainable_fraction(blocks_only=True)}

    def cost(self) -> dict[str, float]:
        return self.task_metrics()
