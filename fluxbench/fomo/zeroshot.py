"""Zero-shot evaluation of a CLIP on FoMo-in-Flux datasets (spec ``fomo_in_flux.md`` section 7).

Per dataset: top-1 accuracy of the prompted class-name classifier (the PRIMER around each of the
dataset's own class names, unit-norm text embeddings, argmax of the cosine similarity), or for
retrieval sets R@5 averaged over text-to-image and image-to-text. These are the per-dataset numbers
that A_KA (mean over adaptation datasets) and A_ZS (mean over evaluation-only datasets) average.

The model is anything with CLIP's two encoders as :class:`fluxbench.backbones.clip.ClipBackbone` has
them (``model(images in [0, 1]) -> image features``, ``model.encode_text(texts) -> unit-norm text
features``); this module does not import the backbones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import DataError
from fluxbench.fomo.captions import class_prompts
from fluxbench.fomo.info import FifReader

RECALL_AT = 5


class ClipLike(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor: ...


def _device(model: ClipLike) -> torch.device:
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def image_features(model: ClipLike, images: ImageDataset, batch_size: int = 256) -> torch.Tensor:
    """``(N, D)`` unit-norm image embeddings of a dataset's uint8 images, in order."""
    device = _device(model)
    out = []
    for start in range(0, len(images), batch_size):
        part = np.ascontiguousarray(images.images[start:start + batch_size])
        x = torch.from_numpy(part).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        out.append(F.normalize(model(x).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def text_features(model: ClipLike, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_text(list(texts[i:i + batch_size]), normalize=True).float()
                      for i in range(0, len(texts), batch_size)])


def predictions(model: ClipLike, images: ImageDataset, prompts: Sequence[str]) -> np.ndarray:
    """Index of the most similar prompt per image."""
    return (image_features(model, images) @ text_features(model, prompts).t()).argmax(dim=1).cpu().numpy()


def classification_accuracy(model: ClipLike, images: ImageDataset, prompts: Sequence[str]) -> float:
    """Top-1 accuracy; ``prompts[c]`` is class ``c``'s text and ``images.labels`` index into it."""
    if not len(images):
        raise DataError(f"{images.name}: no images to evaluate")
    return float(np.mean(predictions(model, images, prompts) == np.asarray(images.labels)))


def retrieval_recall(model: ClipLike, images: ImageDataset, captions: Sequence[Sequence[str]],
                     k: int = RECALL_AT) -> dict[str, float]:
    """R@k image-to-text (any of an image's captions in its top k texts) and text-to-image (the caption's
    image in its top k images), and their mean; ``captions[i]`` are image ``i``'s reference captions."""
    owner = np.array([i for i, texts in enumerate(captions) for _ in texts])
    texts = [t for group in captions for t in group]
    if not texts:
        raise DataError(f"{images.name}: a retrieval set needs reference captions, none found")
    sim = image_features(model, images) @ text_features(model, texts).t()  # (images, texts)
    owner_t = torch.from_numpy(owner).to(sim.device)
    top_texts = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (images, k)
    i2t = (owner_t[top_texts] == torch.arange(len(images), device=sim.device)[:, None]).any(dim=1)
    top_images = sim.t().topk(min(k, sim.shape[0]), dim=1).indices  # (texts, k)
    t2i = (top_images == owner_t[:, None]).any(dim=1)
    has_text = torch.from_numpy(np.array([bool(c) for c in captions])).to(sim.device)
    scores = {"i2t": float(i2t[has_text].float().mean()), "t2i": float(t2i.float().mean())}
    scores["mean"] = (scores["i2t"] + scores["t2i"]) / 2
    return scores


def dataset_score(model: ClipLike, reader: FifReader, name: str, part: str = "test",
                  limit: int | None = None) -> float:
    """A dataset's zero-shot number: accuracy over its own classes, or mean R@5 for a retrieval set.
    ``limit`` evaluates the first ``limit`` images only (a fixed subset, for quick looks)."""
    split = reader.split(name, part)
    images = reader.images(name, part)
    if limit is not None:
        images = images.subset(np.arange(min(limit, len(images))))
    if split.dataset.kind == "retrieval":
        captions = [r.default_caption for r in split.records[:len(images)]]
        return retrieval_recall(model, images, captions)["mean"]
    return classification_accuracy(model, images, class_prompts(split.classnames, split.dataset))


def zero_shot_table(model: ClipLike, reader: FifReader, names: Sequence[str], part: str = "test",
                    limit: int | None = None) -> dict[str, float]:
    """``dataset -> zero-shot number`` for ``names`` (see :func:`dataset_score`)."""
    return {reader.table[n].name: dataset_score(model, reader, n, part, limit) for n in names}


def role_means(reader: FifReader, scores: dict[str, float]) -> dict[str, float]:
    """Plain means over the adaptation (``adapt``, A_KA) and evaluation-only (``eval``, A_ZS) datasets scored."""
    out = {}
    for role in ("adapt", "eval"):
        values = [v for n, v in scores.items() if reader.table[n].role == role]
        if values:
            out[role] = float(np.mean(values))
    return out
