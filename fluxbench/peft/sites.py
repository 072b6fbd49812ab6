"""Where PEFT modules attach: the transformer blocks of a model and the named parts of each block.

Two block layouts are known, both used as the libraries build them:

- timm ``Block`` (``norm1``, ``attn`` = timm ``Attention`` with a fused ``qkv`` Linear and ``proj``,
  ``norm2``, ``mlp`` with ``fc1``/``fc2``);
- open_clip ``ResidualAttentionBlock`` (``ln_1``, ``attn`` = ``nn.MultiheadAttention`` whose fused
  ``in_proj_weight`` and ``out_proj.weight`` are read as tensors, ``ln_2``, ``mlp`` with ``c_fc``/``c_proj``),
  in CLIP's visual and text transformers alike;
- the same open_clip block after :func:`fluxbench.peft.split_attention.split_attention` (``attn`` with
  separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears, as CoDyRA's code rebuilds it): every
  LoRA target is then a Linear called as a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.wrap import innermost

# LoRA targets: a name -> (which fused linear, which third of its output rows; None = all rows)
TARGETS: dict[str, tuple[str, int | None]] = {
    "q": ("qkv", 0), "k": ("qkv", 1), "v": ("qkv", 2), "qkv": ("qkv", None),
    "proj": ("proj", None), "fc1": ("fc1", None), "fc2": ("fc2", None),
}


@dataclass(frozen=True)
class Layout:
    """Attribute paths inside one block type. ``linears`` maps a linear's role to (module path, tensor name).

    A tensor name of ``None`` means the module is an ``nn.Linear`` called as a module (LoRA wraps it);
    a name means the weight is read as a tensor by the library (LoRA parametrizes it).
    """

    library: str
    attn: str
    norm1: str
    norm2: str
    mlp: str
    linears: tuple[tuple[str, str, str | None], ...]

    def has(self, role: str) -> bool:
        return any(name == role for name, _, _ in self.linears)

    def linear(self, role: str) -> tuple[str, str | None]:
        for name, path, tensor in self.linears:
            if name == role:
                return path, tensor
        raise ConfigError(f"no {role!r} linear in a {self.library} block")


TIMM = Layout("timm", "attn", "norm1", "norm2", "mlp",
              (("qkv", "attn.qkv", None), ("proj", "attn.proj", None),
               ("fc1", "mlp.fc1", None), ("fc2", "mlp.fc2", None)))
OPEN_CLIP = Layout("open_clip", "attn", "ln_1", "ln_2", "mlp",
                   (("qkv", "attn", "in_proj_weight"), ("proj", "attn.out_proj", "weight"),
                    ("fc1", "mlp.c_fc", None), ("fc2", "mlp.c_proj", None)))
OPEN_CLIP_SPLIT = Layout("open_clip_split", "attn", "ln_1", "ln_2", "mlp",
                         (("q", "attn.q_proj", None), ("k", "attn.k_proj", None), ("v", "attn.v_proj", None),
                          ("proj", "attn.out_proj", None), ("fc1", "mlp.c_fc", None), ("fc2", "mlp.c_proj", None)))


@dataclass
class Attachment:
    """What attaching to one block produced: PEFT modules by site, how to undo it, and (LoRA) the weights
    a merge writes into, as functions so they are looked up when needed."""

    modules: dict[str, nn.Module]
    undo: Callable[[], None]
    weights: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)


@dataclass
class Tower:
    """One transformer: the container of its blocks (``blocks[i]`` may be wrapped), the block layout,
    how many class/register tokens precede the patch tokens, and whether tokens are batch-first."""

    name: str
    container: nn.Module
    layout: Layout
    num_prefix_tokens: int
    batch_first: bool = True

    @property
    def blocks(self) -> list[nn.Module]:
        """The library blocks, under any wrappers."""
        return [innermost(b) for b in self.container]


def layout_of(block: nn.Module) -> Layout:
    """The layout of ``block``, recognised by its parts (so subclasses and wrapped blocks work)."""
    attn = innermost(getattr(block, "attn", None)) if hasattr(block, "attn") else None
    if hasattr(block, "norm1") and attn is not None and hasattr(attn, "qkv") and hasattr(attn, "proj"):
        return TIMM
    if hasattr(block, "ln_1") and isinstance(attn, nn.MultiheadAttention):
        return OPEN_CLIP
    if hasattr(block, "ln_1") and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")):
        return OPEN_CLIP_SPLIT
    raise ConfigError(
        f"cannot attach PEFT modules to {type(innermost(block)).__name__} blocks; "
        "supported: timm ViT Block, open_clip ResidualAttentionBlock"
    )


def find_tower(model: nn.Module, tower: str = "visual") -> Tower:
    """The transformer ``tower`` ("visual" or "text") of a FeatureBackbone, timm ViT or open_clip model."""
    if tower not in ("visual", "text"):
        raise ConfigError(f"tower must be 'visual' or 'text', not {tower!r}")
    root = _tower_root(model, tower)
    if hasattr(root, "blocks") and isinstance(root.blocks, (nn.Sequential, nn.ModuleList)):
        container, batch_first = root.blocks, True
        prefix = int(getattr(root, "num_prefix_tokens", 1))
    elif hasattr(root, "transformer") and hasattr(root.transformer, "resblocks"):
        container, batch_first = root.transformer.resblocks, bool(getattr(root.transformer, "batch_first", True))
        prefix = 1 if getattr(root, "class_embedding", None) is not None else 0
    else:
        raise ConfigError(f"{type(root).__name__} has no transformer blocks to attach PEFT modules to")
    if len(container) == 0:
        raise ConfigError(f"{type(root).__name__} has no blocks")
    return Tower(tower, container, layout_of(innermost(container[0])), prefix, batch_first)


def _tower_root(model: nn.Module, tower: str) -> nn.Module:
    if tower == "text":
        text = getattr(model, "text", None)  # ClipBackbone keeps the text side here
        if text is None and hasattr(model, "token_embedding"):
            text = model  # an open_clip CLIP (its text side lives on the CLIP object)
        if text is None:
            raise ConfigError(f"{type(model).__name__} has no text tower")
        return text
    inner = getattr(model, "model", None)  # FeatureBackbone
    model = inner if isinstance(inner, nn.Module) else model
    visual = getattr(model, "visual", None)  # a whole open_clip CLIP
    return visual if isinstance(visual, nn.Module) else model


def select_blocks(num_blocks: int, blocks: Iterable[int] | int | None) -> list[int]:
    """Block indices to attach to: None = all, an int = the first n, or a list (negative counts from the end)."""
    if blocks is None:
        return list(range(num_blocks))
    if isinstance(blocks, int):
        if not 0 < blocks <= num_blocks:
            raise ConfigError(f"blocks={blocks} is out of range for a model with {num_blocks} blocks")
        return list(range(blocks))
    chosen = []
    for index in blocks:
        if not -num_blocks <= int(index) < num_blocks:
            raise ConfigError(f"block index {index} is out of range for a model with {num_blocks} blocks")
        chosen.append(int(index) % num_blocks)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"blocks {list(blocks)} name a block twice")
    return sorted(chosen)
