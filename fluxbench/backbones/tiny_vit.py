"""The embedded backbone: a real timm ``VisionTransformer`` sized for 8x8 digits.

Pre-trained-model methods need a pre-trained backbone, so fluxbench trains this one
once on the digits *pretraining* pool (disjoint from the tuning and evaluation pools),
stores it as a safetensors file under the cache directory, keyed by a hash of its
recipe, and from then on loads it through :func:`create_timm_model`, the same path
that loads a ViT-B/16 file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer
from torch import nn

from fluxbench.backbones.base import DatasetLoader, require_loader
from fluxbench.backbones.loading import create_timm_model
from fluxbench.batching import iterate_batches
from fluxbench.cache import cache_dir, recipe_hash

TINY_VIT_ARGS = dict(img_size=8, patch_size=2, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
_PRETRAINED_CFG = dict(
    architecture="vit_digits_patch2", input_size=(3, 8, 8), num_classes=0, mean=(0.5,) * 3, std=(0.5,) * 3,
    first_conv="patch_embed.proj", classifier="head",
)
# read by timm's @register_model: gives the model a pretrained config, so timm does not warn on creation
default_cfgs = {"vit_digits_patch2": dict(_PRETRAINED_CFG)}


@register_model
def vit_digits_patch2(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT with 2x2 patches on 8x8 images: 16 tokens + CLS, 4 blocks of width 64."""
    kwargs.setdefault("pretrained_cfg", dict(_PRETRAINED_CFG))
    return _create_vision_transformer("vit_digits_patch2", pretrained=pretrained, **dict(TINY_VIT_ARGS, **kwargs))


def pretrained_tiny_vit(pretrain: dict[str, Any], load_data: DatasetLoader | None = None) -> tuple[nn.Module, str]:
    """The pre-trained tiny ViT (no head) and its recipe hash; trained and cached on first use."""
    recipe = {"model": "vit_digits_patch2", "args": TINY_VIT_ARGS, "pretrain": dict(pretrain), "version": 1}
    key = recipe_hash(recipe)
    path = cache_dir("backbones") / f"vit_digits_patch2-{key}.safetensors"
    if not path.is_file():
        _pretrain_to(path, dict(pretrain), load_data)
    model = create_timm_model("vit_digits_patch2", weights=path, num_classes=0)
    return model, key


def _pretrain_to(path: Path, pretrain: dict[str, Any], load_data: DatasetLoader | None) -> None:
    spec = {k: v for k, v in pretrain.items() if k in ("dataset", "pool", "classes")}
    split = require_loader(load_data, "the embedded tiny_vit")(spec)
    x, y = split.train.to_tensors()
    mean = std = torch.tensor(0.5)
    x = (x - mean) / std
    with torch.random.fork_rng():
        torch.manual_seed(int(pretrain.get("seed", 0)))
        model = vit_digits_patch2(num_classes=0)
        head = nn.Linear(model.num_features, split.num_classes)
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=float(pretrain.get("lr", 1e-3)), weight_decay=0.05)
        epochs = int(pretrain.get("epochs", 60))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=float(pretrain.get("lr", 1e-3)), total_steps=epochs * -(-len(y) // 64)
        )
        model.train()
        for _ in range(epochs):
            for xb, yb in iterate_batches(x, y, 64, shuffle=True, transform=_jitter):
                loss = nn.functional.cross_entropy(head(model(xb)), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    # write-then-rename: parallel processes may build the same file at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def _jitter(x: torch.Tensor) -> torch.Tensor:
    """Random one-pixel shifts: cheap augmentation that keeps 8x8 digits legible."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
