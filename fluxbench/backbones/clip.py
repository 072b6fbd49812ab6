"""open_clip CLIP models from local weights: the visual tower as the backbone, the text tower kept for methods.

Weights come from ``weights=/path/file`` (``.safetensors``, ``.bin``/``.pt``/``.pth``, OpenAI's TorchScript
``.pt`` included, read by open_clip's ``load_checkpoint``), or from the Hugging Face hub cache entry that
open_clip names for ``pretrained`` (a tag such as ``openai`` or ``laion2b_s34b_b88k``), or from an
open_clip folder given as ``model: local-dir:/path`` (``open_clip_config.json`` + weights). Nothing here
downloads; ``hf-hub:`` model names are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.backbones.loading import (
    LOAD_ERRORS,
    ResizeCrop,
    check_weight_file,
    fetch_command,
    find_in_hf_cache,
    hf_cache_dir,
    hf_cache_path,
)
from fluxbench.errors import ConfigError, DataError

CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class ClipBackbone(FeatureBackbone):
    """CLIP's visual tower as a :class:`FeatureBackbone` (``model``), with the text side as ``text``.

    ``text`` is the open_clip CLIP object with its visual tower removed: ``text.encode_text(tokens)``,
    ``text.logit_scale`` and the text transformer (``text.transformer.resblocks``, where PEFT modules
    attach with ``tower="text"``) all work as in open_clip. Features are CLIP's projected image embeddings.
    """

    def __init__(self, clip: nn.Module, tokenizer: Any, mean, std, recipe: dict) -> None:
        visual = clip.visual
        clip.visual = None
        super().__init__(visual, int(visual.output_dim), mean, std, recipe=recipe)
        self.text = clip
        self.tokenizer = tokenizer

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings of ``texts`` (tokenised with the model's own tokenizer)."""
        device = self.text.logit_scale.device
        return self.text.encode_text(self.tokenizer(list(texts)).to(device), normalize=normalize)

    def zero_shot_head(self, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """(classes, dim) unit-norm class embeddings: each the normalised mean over ``templates``."""
        if not classnames:
            raise ConfigError("zero_shot_head() needs at least one class name")
        texts = [t.format(name) for name in classnames for t in templates]
        emb = self.encode_text(texts).view(len(classnames), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)

    def logits(self, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """CLIP logits ``exp(logit_scale) * cos(image, class)`` of images ``x`` in [0, 1] against ``head``."""
        image = F.normalize(self(x), dim=-1)
        return self.text.logit_scale.exp() * image @ head.t()


def build_clip_backbone(cfg: dict[str, Any]) -> ClipBackbone:
    """A :class:`ClipBackbone` from a backbone config.

    ``cfg``: ``model`` (open_clip name such as ``ViT-B-16``, or ``local-dir:/path``), ``pretrained``
    (a tag for the hub cache lookup, or false for random init), ``weights`` (a local file; wins over the
    tag), ``mean``/``std`` (null = raw pixels), ``quick_gelu`` (null = what the tag was trained with),
    ``model_kwargs`` (passed to ``open_clip.create_model``).
    """
    name = cfg.get("model")
    if not name:
        raise ConfigError("backbone.model is missing; set it to an open_clip name such as ViT-B-16")
    if str(name).startswith("hf-hub:"):
        raise ConfigError(f"backbone.model={name!r} would download; use a built-in name with weights, or local-dir:")
    tag = cfg.get("pretrained")
    tag = None if tag in (None, False, "none", "") else str(tag)
    kwargs = dict(cfg.get("model_kwargs") or {})
    quick_gelu = cfg.get("quick_gelu")
    if quick_gelu is None and tag and not str(name).startswith("local-dir:"):
        quick_gelu = bool(_tag_cfg(name, tag).get("quick_gelu", False))
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    weights = _resolve_clip_weights(name, tag, cfg.get("weights"))
    clip = _create(name, weights, kwargs)
    input_size = getattr(clip.visual, "image_size", 224)
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else (int(input_size),) * 2
    recipe = {"name": f"open_clip:{name}", "pretrained": tag, "weights": str(weights) if weights else None,
              "input_size": [3, *size], "interpolation": "bicubic", "crop_pct": 1.0}
    tokenizer = open_clip.get_tokenizer(name, context_length=getattr(clip, "context_length", None))
    backbone = ClipBackbone(clip, tokenizer, cfg.get("mean"), cfg.get("std"), recipe)
    backbone.transform = ResizeCrop(size, "bicubic", 1.0)
    return backbone


def _resolve_clip_weights(name: str, tag: str | None, weights: str | None) -> Path | None:
    if str(name).startswith("local-dir:"):
        folder = Path(str(name)[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise DataError(f"open_clip folder {folder} has no open_clip_config.json; fix backbone.model")
        return None
    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r}; known include ViT-B-16, ViT-B-32, ViT-L-14")
    hub = _tag_cfg(name, tag).get("hf_hub", "").rstrip("/") if tag else ""
    if weights is not None:
        return check_weight_file(weights, name, repo=hub or None)
    if tag is None:
        return None
    if not hub:
        raise ConfigError(f"open_clip tag {tag!r} of {name} has no hub copy; set backbone.weights=/path/to/file")
    found = find_in_hf_cache(hub, CLIP_HUB_FILES)
    if found is None:
        raise DataError(
            f"no weights for {name} ({tag}): looked for {hf_cache_path(hub, CLIP_HUB_FILES[0])}; on a machine with "
            f"internet access run `{fetch_command(hub, CLIP_HUB_FILES[0])}`, then copy that machine's hub cache into "
            f"{hf_cache_dir()} (or set backbone.weights=/path/to/{CLIP_HUB_FILES[0]})"
        )
    return found


def _tag_cfg(name: str, tag: str) -> dict:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ConfigError(f"open_clip model {name} has no pretrained tag {tag!r}; known: {known}")
    return cfg


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" when ``pretrained=None``; fluxbench
    always loads its weights itself right after, so the line would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_open_clip(name: str, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model(name, pretrained=None)`` without its misleading random-init warning."""
    quiet = _NoRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


def _create(name: str, weights: Path | None, kwargs: dict) -> nn.Module:
    try:
        model = create_open_clip(name, **kwargs)
        if weights is not None:
            open_clip.load_checkpoint(model, str(weights))
    except LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"open_clip model {name} could not be built from {weights or name}: {first[:300]}") from err
    return model
