"""The embedded CLIP: an open_clip ``CLIP`` sized for 32 px digits, built by open_clip's own factory.

FoMo-in-Flux measures what continual pretraining of a CLIP adds (knowledge accumulation) and loses
(zero-shot retention), so the embedded default needs a CLIP that already knows something. This one
is registered as an open_clip model config (``open_clip_configs/fluxbench-tiny-clip-digits.json``:
a ViT image tower, a text tower over open_clip's bundled BPE tokenizer, no download), pre-trained once
with open_clip's ``ClipLoss`` (InfoNCE, learnable logit scale, AdamW) on the digits *pretraining* pool
with templated captions, and cached as safetensors under the cache directory keyed by a hash of its
recipe. It is then loaded by :func:`fluxbench.backbones.clip.build_clip_backbone`, the path that loads
a ViT-B/16 file. The pool is disjoint from the ``tuning``/``evaluation`` pools the streams are built
from; the data comes through the injected loader, so ``backbones/`` never imports ``benchmarks/``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file
from torch.nn import functional as F

from fluxbench.backbones.base import DatasetLoader, require_loader
from fluxbench.backbones.clip import ClipBackbone, build_clip_backbone
from fluxbench.cache import cache_dir, recipe_hash

MODEL_NAME = "fluxbench-tiny-clip-digits"
CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
IMAGE_SIZE = 32
MEAN = STD = (0.5, 0.5, 0.5)
RECIPE_VERSION = 1


def register_config() -> str:
    """Add fluxbench's open_clip model configs to open_clip's registry (once) and return the tiny CLIP's name."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return MODEL_NAME


def tokenizer() -> Any:
    """open_clip's bundled BPE tokenizer at this config's context length (no file is fetched)."""
    return open_clip.get_tokenizer(register_config())


def tiny_clip_recipe(pretrain: dict[str, Any]) -> dict[str, Any]:
    register_config()
    return {"model": MODEL_NAME, "config": open_clip.get_model_config(MODEL_NAME), "pretrain": dict(pretrain),
            "version": RECIPE_VERSION}


def pretrained_tiny_clip(pretrain: dict[str, Any], load_data: DatasetLoader | None = None) -> tuple[Path, str]:
    """The pre-trained tiny CLIP's weight file and its recipe hash; trained and cached on first use."""
    key = recipe_hash(tiny_clip_recipe(pretrain))
    path = cache_dir("backbones") / f"{MODEL_NAME}-{key}.safetensors"
    if not path.is_file():
        _pretrain_to(path, dict(pretrain), load_data)
    return path, key


def build_tiny_clip(cfg: dict[str, Any], load_data: DatasetLoader | None) -> ClipBackbone:
    """The ``tiny_clip`` backbone kind: pre-train (once), then load the file as any open_clip checkpoint."""
    path, key = pretrained_tiny_clip(cfg["pretrain"], load_data)
    mean, std = cfg.get("mean", MEAN), cfg.get("std", STD)
    backbone = build_clip_backbone({"model": MODEL_NAME, "pretrained": None, "weights": str(path),
                                    "mean": mean, "std": std})
    backbone.recipe["recipe_hash"] = key
    return backbone


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Digits at 8 px -> 32 px by pixel replication, as :mod:`fluxbench.fomo.digits` writes its images."""
    if x.shape[-1] == IMAGE_SIZE:
        return x
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")


def caption_tokens(tokenizer: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``(templates, classes, context)`` tokens: every template filled with every class name."""
    texts = [t.format(c) for t in templates for c in classnames]
    return tokenizer(texts).view(len(templates), len(classnames), -1)


def _pretrain_to(path: Path, pretrain: dict[str, Any], load_data: DatasetLoader | None) -> None:
    spec = {k: v for k, v in pretrain.items() if k in ("dataset", "pool", "classes")}
    split = require_loader(load_data, "the embedded tiny_clip")(spec)
    x, y = split.train.to_tensors()
    x = (upsample(x) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    # no augmentation: random shifts of the whole batch kept this ViT's InfoNCE loss at log(batch) for
    # hundreds of steps; unshifted, 27 epochs reach about 0.9 zero-shot accuracy on the held-out digits
    epochs, batch = int(pretrain.get("epochs", 27)), int(pretrain.get("batch_size", 64))
    lr = float(pretrain.get("lr", 1e-3))
    with torch.random.fork_rng():
        torch.manual_seed(int(pretrain.get("seed", 0)))
        model = open_clip.create_model(register_config(), pretrained=None)
        tokens = caption_tokens(tokenizer(), pretrain["classnames"], pretrain["templates"])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(pretrain.get("weight_decay", 0.1)))
        steps = epochs * -(-len(y) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        loss_fn = ClipLoss()
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(y)).split(batch):
                # one caption per image: a random template around its class name
                text = tokens[torch.randint(len(tokens), (len(index),)), y[index]]
                image_features, text_features, scale = model(x[index], text)
                loss = loss_fn(image_features, text_features, scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():  # CLIP's clamp: the temperature never drops below 1/100
                    model.logit_scale.clamp_(0, 4.6052)
    # write-then-rename: parallel processes may build the same file at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)

