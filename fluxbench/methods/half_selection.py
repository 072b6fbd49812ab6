"""HFT's parameter categories on a timm ViT or open_clip towers, and the draw that freezes half of each group.

specs/hft.md sections 2 and 5: per block, attention {q, k, v, proj} (freeze 2), MLP {fc1, fc2} (freeze 1),
norms {norm1, norm2} (freeze 1); a bias follows its weight. To make q, k and v separately freezable, the
fused ``attn.qkv`` Linear is replaced by :class:`SplitQKV`, three Linears with the same output layout
(the spec's first mapping; with {qkv, proj} as two categories the frozen share of a block would range
from 37 % to 63 % by parameter count on the tiny ViT, since qkv is three times proj).

open_clip's ResidualAttentionBlock (:func:`open_clip_categories`, per tower, spec section 5 "CLIP: apply per
tower"): attention {q, k, v, out_proj}, MLP {c_fc, c_proj}, norms {ln_1, ln_2}. Its ``nn.MultiheadAttention``
keeps q, k, v in one ``in_proj_weight`` Parameter, which ``requires_grad`` cannot split, so
:func:`split_in_projection` turns it into three parameter holders whose concatenation *is* the fused weight
(bit-identical forward). ``split_qkv=False`` keeps {in_proj, out_proj} as the two attention categories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import find_tower


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


class SplitInProjection(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose in-projection lives in ``q``, ``k``, ``v`` (Linears used only as holders
    of a weight and bias): ``in_proj_weight`` / ``in_proj_bias`` are their concatenations, so the stock forward
    (``F.multi_head_attention_forward``) runs unchanged and gradients reach each third separately."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear

    @property
    def in_proj_weight(self) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([self.q.weight, self.k.weight, self.v.weight])

    @property
    def in_proj_bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self.q.bias is None else torch.cat([self.q.bias, self.k.bias, self.v.bias])


def split_in_projection(mha: nn.MultiheadAttention) -> SplitInProjection:
    """Turn ``mha`` in place into a :class:`SplitInProjection` with the same values (a no-op if it is one)."""
    if isinstance(mha, SplitInProjection):
        return mha
    if not mha._qkv_same_embed_dim or mha.bias_k is not None:
        raise ConfigError("HFT's q/k/v split needs nn.MultiheadAttention with one fused in-projection and no bias_k")
    weight, bias = mha._parameters.pop("in_proj_weight"), mha._parameters.pop("in_proj_bias")
    mha.__class__ = SplitInProjection  # the class swap keeps out_proj, dropout, batch_first and every hook
    d = mha.embed_dim
    for i, name in enumerate("qkv"):
        part = nn.Linear(d, d, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            part.weight.copy_(weight[i * d:(i + 1) * d])
            if bias is not None:
                part.bias.copy_(bias[i * d:(i + 1) * d])
        setattr(mha, name, part)
    return mha  # type: ignore[return-value]


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


def open_clip_categories(model: nn.Module, split_qkv: bool = True) -> list[Category]:
    """The categories of every ResidualAttentionBlock of both towers of a ClipBackbone or open_clip CLIP.

    With ``split_qkv`` each block's attention is turned into a :class:`SplitInProjection` in place.
    """
    paths = {id(m): n for n, m in model.named_modules()}
    cats = []
    for tower_name in ("visual", "text"):
        blocks = find_tower(model, tower_name).container
        for i, block in enumerate(blocks):
            if not all(hasattr(block, a) for a in ("attn", "ln_1", "ln_2")) or not hasattr(block.mlp, "c_fc"):
                raise ConfigError(f"HFT on CLIP needs open_clip ResidualAttentionBlocks; got {type(block).__name__}")
            if not isinstance(block.attn, nn.MultiheadAttention):
                raise ConfigError(f"HFT on CLIP needs nn.MultiheadAttention blocks; got {type(block.attn).__name__}")
            if split_qkv:
                split_in_projection(block.attn)
            p = f"{paths[id(blocks)]}.{i}"
            attn = [f"{p}.attn.{x}" for x in "qkv"] if split_qkv else [f"{p}.attn.in_proj"]
            groups = {"attn": [*attn, f"{p}.attn.out_proj"], "mlp": [f"{p}.mlp.c_fc", f"{p}.mlp.c_proj"],
                      "norm": [f"{p}.ln_1", f"{p}.ln_2"]}
            cats += [Category(n, f"block.{tower_name}{i}.{g}") for g, names in groups.items() for n in names]
    return cats


def category_parameters(model: nn.Module, cat: Category) -> list[nn.Parameter]:
    """The tensors of a category: a module's parameters, or (pos_embed) the position and class tokens, or
    (in_proj) an ``nn.MultiheadAttention``'s fused in-projection weight and bias."""
    parent, _, leaf = cat.name.rpartition(".")
    if leaf == "in_proj":
        owner = model.get_submodule(parent)
        return [p for p in (owner.in_proj_weight, owner.in_proj_bias) if p is not None]
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


class HalfFrozenMask:
    """HFT's mask on a method's model, shared by the class-incremental and the continual-pretraining HFT: the
    categories, their parameters, and two buffers (the seed base, drawn from the protocol-seeded global RNG so
    masks differ across seeds, and the current ``frozen`` flags, so a resume keeps both). Mixed into an
    ``nn.Module`` that has ``self.model``."""

    model: nn.Module

    def init_mask(self, model: nn.Module, categories: list[Category]) -> None:
        self.categories = categories
        self._params = [category_parameters(model, c) for c in categories]
        self.register_buffer("base_seed", torch.randint(2**31 - 1, ()))
        self.register_buffer("frozen", torch.zeros(len(categories), dtype=torch.bool))

    def apply_mask(self, seed: int) -> None:
        """Draw the mask for ``seed`` and apply it: frozen categories stop requiring grad, the rest train."""
        self.frozen.copy_(draw_frozen(self.categories, seed))
        self.model.requires_grad_(True)
        for params, frozen in zip(self._params, self.frozen.tolist()):
            for p in params:
                p.requires_grad_(not frozen)

    def mask(self) -> dict[str, bool]:
        """Category name -> frozen, for the current task (or epoch)."""
        return {c.name: f for c, f in zip(self.categories, self.frozen.tolist())}

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [p for params, f in zip(self._params, self.frozen.tolist()) if f for p in params]

    def trainable_fraction(self, blocks_only: bool = False) -> float:
        """Share of parameters (by count) the current mask trains: of the model, or of its blocks."""
        chosen = [(ps, f) for ps, c, f in zip(self._params, self.categories, self.frozen.tolist())
                  if not blocks_only or c.group.startswith("block")]
        frozen = sum(p.numel() for ps, f in chosen if f for p in ps)
        params = [p for ps, _ in chosen for p in ps] if blocks_only else list(self.model.parameters())
        return 1.0 - frozen / sum(p.numel() for p in params)
