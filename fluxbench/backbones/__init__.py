"""Backbones by kind: ``build_backbone(cfg)`` returns a fresh :class:`FeatureBackbone`.

A kind is registered with ``@register_backbone_kind("name")`` and called as::

    builder(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone

where ``cfg`` is the resolved ``backbone`` config node as a plain dict, and ``load_data`` reads a dataset
spec (the protocol passes ``benchmarks.load_dataset`` bound to ``data_root``): an embedded backbone that is
pre-trained on first use gets its data so, and ``backbones/`` never imports ``benchmarks/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxbench.backbones.base import DatasetLoader, FeatureBackbone
from fluxbench.errors import ConfigError

Builder = Callable[[dict, DatasetLoader | None], FeatureBackbone]
_KINDS: dict[str, Builder] = {}


def register_backbone_kind(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        _KINDS[name] = fn
        return fn

    return wrap


def build_backbone(cfg: dict[str, Any], load_data: DatasetLoader | None = None) -> FeatureBackbone:
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"unknown backbone kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](dict(cfg), load_data)


@register_backbone_kind("tiny_vit")
def _tiny_vit(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone:
    from fluxbench.backbones.tiny_vit import pretrained_tiny_vit

    model, key = pretrained_tiny_vit(cfg["pretrain"], load_data)
    return FeatureBackbone(model, model.num_features, cfg.get("mean"), cfg.get("std"),
                           recipe={"name": "vit_digits_patch2", "recipe_hash": key})


@register_backbone_kind("tiny_clip")
def _tiny_clip(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone:
    from fluxbench.backbones.tiny_clip import build_tiny_clip

    return build_tiny_clip(cfg, load_data)


@register_backbone_kind("small_cnn")
def _small_cnn(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone:
    from fluxbench.backbones.small_cnn import SmallCNN

    model = SmallCNN(width=int(cfg.get("width", 32)))
    return FeatureBackbone(model, model.num_features, cfg.get("mean"), cfg.get("std"), recipe={"name": "small_cnn"})


@register_backbone_kind("timm")
def _timm(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone:
    from fluxbench.backbones.loading import build_timm_backbone

    return build_timm_backbone(cfg)


@register_backbone_kind("open_clip")
def _open_clip(cfg: dict, load_data: DatasetLoader | None) -> FeatureBackbone:
    from fluxbench.backbones.clip import build_clip_backbone

    return build_clip_backbone(cfg)


__all__ = ["DatasetLoader", "FeatureBackbone", "build_backbone", "register_backbone_kind"]
