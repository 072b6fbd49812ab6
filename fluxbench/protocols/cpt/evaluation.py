"""Scoring a CLIP after each task (spec ``fomo_in_flux.md`` sections 4 and 7).

Per dataset, the zero-shot number of :mod:`fluxbench.fomo.zeroshot` (prompted class-name accuracy over the
dataset's own classes, or mean R@5 for a retrieval set); A_KA = plain mean over the adaptation datasets,
A_ZS = plain mean over the evaluation-only ones, and their geometric mean. Before training and after the
last task every test image is scored; after the other tasks a stratified subset of each test split: 10%
of it, at least 300 images and at least 2 per class (capped at the split), drawn once per seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fluxbench.fomo import zeroshot
from fluxbench.fomo.captions import class_prompts
from fluxbench.fomo.info import FifReader


def stratified_subset(labels: np.ndarray, fraction: float, minimum: int, per_class: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: ``max(fraction * N, minimum)`` images (capped at N), ``per_class`` of each class first,
    the rest spread over classes in proportion to their size."""
    labels = np.asarray(labels)
    n = len(labels)
    size = min(n, max(int(math.ceil(fraction * n)), minimum))
    if size >= n:
        return np.arange(n)
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.extend(rng.choice(members, min(per_class, len(members)), replace=False).tolist())
    rest = np.setdiff1d(np.arange(n), chosen)
    extra = max(0, size - len(chosen))
    chosen.extend(rng.choice(rest, min(extra, len(rest)), replace=False).tolist())
    return np.sort(np.asarray(chosen))


def eval_subsets(reader: FifReader, names: Sequence[str], opts: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Per dataset, the indices of its test split scored after the intermediate tasks."""
    rng = np.random.default_rng([seed, 7919])
    return {n: stratified_subset(reader.images(n, "test").labels, float(opts["fraction"]), int(opts["min_samples"]),
                                 int(opts["min_per_class"]), rng) for n in names}


def dataset_score(model: Any, reader: FifReader, name: str, index: np.ndarray | None = None) -> float:
    """The zero-shot number of dataset ``name`` on its test images ``index`` (None: all)."""
    split, images = reader.split(name, "test"), reader.images(name, "test")
    if index is not None:
        images = images.subset(index)
    if split.dataset.kind == "retrieval":
        rows = range(len(split.records)) if index is None else index
        return zeroshot.retrieval_recall(model, images, [split.records[i].default_caption for i in rows])["mean"]
    return zeroshot.classification_accuracy(model, images, class_prompts(split.classnames, split.dataset))


@torch.no_grad()
def score(model: Any, reader: FifReader, adapt: Sequence[str], evaluate: Sequence[str],
          subsets: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """``acc.<dataset>`` for every dataset, ``A_KA``, ``A_ZS`` and ``gmean``."""
    was_training = model.training
    model.eval()
    per = {n: dataset_score(model, reader, n, None if subsets is None else subsets[n]) for n in (*adapt, *evaluate)}
    model.train(was_training)
    ka = float(np.mean([per[n] for n in adapt])) if adapt else float("nan")
    zs = float(np.mean([per[n] for n in evaluate])) if evaluate else float("nan")
    gmean = math.sqrt(max(ka, 0) * max(zs, 0))
    return {**{f"acc.{n}": v for n, v in per.items()}, "A_KA": ka, "A_ZS": zs, "gmean": gmean}
