"""HFT's parameter categories on a timm ViT, and the draw that freezes half of each group of them.

specs/hft.md sections 2 and 5: per block, attention {q, k, v, proj} (freeze 2), MLP {fc1, fc2} (freeze 1),
norms {norm1, norm2} (freeze 1); a bias follows its weight. To make q, k and v separately freezable, the
fused ``attn.qkv`` Linear is replaced by :class:`SplitQKV`, three Linears with the same output layout
(the spec's first mapping; with {qkv, proj} as two categories the frozen share of a block would range
from 37 % to 63 % by parameter count on the tiny ViT, since qkv is three times proj).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.errors import ConfigError


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears whose concatenated outputs are the fused output."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        d, bias = fused.out_features // 3, fused.bias is not None
        kw = dict(device=fused.weight.device, dtype=fused.weight.dtype)
        self.q, self.k, self.v = (nn.Linear(fused.in_features, d, bias=bias, **kw) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(fused.weight[i * d:(i + 1) * d])
                if bias:
                    part.bias.copy_(fused.bias[i * d:(i + 1) * d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


@dataclass(frozen=True)
class Category:
    """One freezable unit: a weight matrix or norm (with its bias), by module path in the model."""

    name: str
    group: str  # categories of one group compete: half of each group is frozen


def _block_groups(prefix: str, split_qkv: bool) -> dict[str, list[str]]:
    attn = [f"{prefix}.attn.qkv.{p}" for p in "qkv"] if split_qkv else [f"{prefix}.attn.qkv"]
    return {"attn": [*attn, f"{prefix}.attn.proj"], "mlp": [f"{prefix}.mlp.fc1", f"{prefix}.mlp.fc2"],
            "norm": [f"{prefix}.norm1", f"{prefix}.norm2"]}


def timm_categories(model: nn.Module, vit_path: str, split_qkv: bool = True,
                    outside_blocks: bool = False) -> list[Category]:
    """The categories of the timm ViT at ``vit_path`` inside ``model``; splits fused qkv in place if asked.

    ``outside_blocks`` adds {patch_embed, pos_embed + cls_token} and {final norm, head} as two more groups.
    """
    vit = model.get_submodule(vit_path)
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise ConfigError(f"method=hft needs a timm ViT backbone (blocks with attn.qkv); got {type(vit).__name__}")
    cats = []
    for i, block in enumerate(blocks):
        if split_qkv and isinstance(block.attn.qkv, nn.Linear):
            block.attn.qkv = SplitQKV(block.attn.qkv)
        for group, names in _block_groups(f"{vit_path}.blocks.{i}", split_qkv).items():
            cats += [Category(n, f"block{i}.{group}") for n in names]
    if outside_blocks:
        cats += [Category(f"{vit_path}.patch_embed", "embed"), Category(f"{vit_path}.pos_embed", "embed"),
                 Category(f"{vit_path}.norm", "head"), Category("head", "head")]
    return cats


def category_parameters(model: nn.Module, cat: Category) -> list[nn.Parameter]:
    """The tensors of a category: a module's parameters, or (pos_embed) the position and class tokens."""
    parent, _, leaf = cat.name.rpartition(".")
    if leaf == "pos_embed":
        owner = model.get_submodule(parent)
        return [p for p in (owner.pos_embed, getattr(owner, "cls_token", None)) if p is not None]
    return list(model.get_submodule(cat.name).parameters())


def draw_frozen(categories: list[Category], seed: int) -> torch.Tensor:
    """A bool per category: ``len(group) // 2`` of every group frozen, drawn with a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    frozen = torch.zeros(len(categories), dtype=torch.bool)
    groups: dict[str, list[int]] = {}
    for i, cat in enumerate(categories):
        groups.setdefault(cat.group, []).append(i)
    for members in groups.values():
        pick = torch.randperm(len(members), generator=gen)[: len(members) // 2]
        frozen[[members[int(j)] for j in pick]] = True
    return frozen
