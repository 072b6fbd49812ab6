"""The pools of a continual-pretraining seed from the benchmark: each task's update pool, the buffer of earlier
tasks, and the pretraining pool.

The pretraining pool is ``protocol.pretraining_pool`` when set (a path), else ``benchmark.pretraining_pool``:
- a path: the user's own image-text set, a folder of image + same-stem ``.txt`` pairs or webdataset shards
  (``.tar`` or a brace pattern), read by :mod:`fluxbench.benchmarks.image_text` at the benchmark's image size;
- ``{kind: digits, ...}`` (the embedded default): a digits pool, upsampled to the stream's image size by pixel
  replication as :mod:`fluxbench.fomo.digits` renders, one caption per image drawn from ``templates`` around its
  class name, as the tiny CLIP was pre-trained;
- ``null``: none; the mixture falls back to the spec's 0 / 0.5 / 0.5 and the run records the deviation.
``protocol.pretraining_pool_limit`` keeps the first N pairs of any kind (files in sorted order, shards in order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxbench.benchmarks import load_dataset
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.image_text import ImageTextPairs, check_limit, read_image_text
from fluxbench.errors import ConfigError
from fluxbench.fomo.info import FifReader
from fluxbench.fomo.streams import FifStream, task_captions
from fluxbench.protocols.cpt.pools import ImageTextPool, pool_of
from fluxbench.streams.experience import Experience

Tokenize = Callable[[Sequence[str]], torch.Tensor]
POOL_KINDS = ("digits",)


def update_pool(reader: FifReader, stream: FifStream, exp: Experience, caption_seed: int,
                tokenize: Tokenize) -> ImageTextPool:
    """Task ``exp.index``'s training images with their captions (the caption rule, drawn from (seed, task))."""
    captions = task_captions(reader, stream.tasks[exp.index], caption_seed)
    return pool_of(exp.train.images, tokenize(captions), exp.train.labels, exp.index)


def buffer_pool(pools: Sequence[ImageTextPool]) -> ImageTextPool | None:
    """The union of every earlier task's update pool (unbounded, as in the release); None before task 2."""
    return ImageTextPool.concat(list(pools)) if pools else None


def pool_spec(cfg: Mapping[str, Any]) -> str | Mapping[str, Any] | None:
    """The pretraining pool a run uses: ``protocol.pretraining_pool`` (a path) wins over the benchmark's own."""
    path = cfg["protocol"].get("pretraining_pool")
    return str(path) if path else cfg["benchmark"].get("pretraining_pool")


def read_pairs(cfg: Mapping[str, Any]) -> ImageTextPairs | None:
    """The user's pool read and decoded (once per call, before any run starts), or None for digits / no pool."""
    spec, limit = pool_spec(cfg), check_limit(cfg["protocol"].get("pretraining_pool_limit"))
    if not isinstance(spec, (str, Path)):
        return None
    bench = cfg["benchmark"]
    rule = ResizeRule(int(bench.get("image_size", 224)), float(bench.get("crop_pct", 1.0)))
    return read_image_text(spec, rule, limit)


def pretraining_pool(spec: Mapping[str, Any] | ImageTextPairs | None, data_root: str | Path, image_size: int,
                     tokenize: Tokenize, seed: int = 0, limit: int | None = None) -> ImageTextPool | None:
    if spec is None or isinstance(spec, ImageTextPairs):
        return None if spec is None else pool_of(spec.images, tokenize(spec.captions), np.full(len(spec), -1), -1)
    return digits_pool(spec, data_root, image_size, tokenize, seed, limit)


def digits_pool(spec: Mapping[str, Any], data_root: str | Path, image_size: int, tokenize: Tokenize, seed: int,
                limit: int | None) -> ImageTextPool | None:
    if not spec:
        return None
    kind = spec.get("kind")
    if kind not in POOL_KINDS:
        raise ConfigError(f"benchmark.pretraining_pool.kind must be one of {', '.join(POOL_KINDS)} (or give a "
                          f"path); got {kind!r}")
    split = load_dataset({"dataset": "digits", "pool": str(spec.get("pool", "pretraining"))}, Path(data_root))
    images = np.asarray(split.train.images)[:limit]
    factor = image_size // images.shape[1]
    if factor > 1:  # nearest-neighbour upsampling, as the FiF digits are written
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    names, templates = list(spec["classnames"]), list(spec["templates"])
    rng = np.random.default_rng([seed, 104729])
    labels = np.asarray(split.train.labels)[:limit]
    captions = [templates[int(rng.integers(len(templates)))].format(names[int(y)]) for y in labels]
    return pool_of(images, tokenize(captions), np.full(len(labels), -1), -1)
