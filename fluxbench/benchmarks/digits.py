"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes): the offline default.

The images are split once, by a fixed seed that no run can change, into three
disjoint pools (``pretraining`` for the embedded backbone, ``tuning`` and
``evaluation`` for the two protocol phases), each with a stratified train/test part.
Pixel-identical duplicates are dropped first so that pools are disjoint by content,
which is what the two-phase leakage check compares.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import ConfigError

POOLS = {"pretraining": 0.4, "tuning": 0.3, "evaluation": 0.3}
TEST_FRACTION = 0.25
_SPLIT_SEED = 20240313  # fixed forever: the pools are part of the benchmark's definition


@lru_cache(maxsize=1)
def _pools() -> dict[str, DataSplit]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255, three channels so that RGB code paths (corruptions, ViT stems) apply unchanged
    grey = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    _, first = np.unique(grey.reshape(len(grey), -1), axis=0, return_index=True)
    keep = np.sort(first)
    images = np.repeat(grey[keep][..., None], 3, axis=3)
    labels = bunch.target[keep].astype(np.int64)
    ids = np.array([f"digits:{i}" for i in keep])

    rng = np.random.default_rng(_SPLIT_SEED)
    pools: dict[str, list[int]] = {name: [] for name in POOLS}
    tests: dict[str, list[int]] = {name: [] for name in POOLS}
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum([0] + [round(f * len(members)) for f in POOLS.values()])
        bounds[-1] = len(members)
        for (name, _), lo, hi in zip(POOLS.items(), bounds[:-1], bounds[1:]):
            part = members[lo:hi]
            n_test = round(TEST_FRACTION * len(part))
            tests[name].extend(part[:n_test])
            pools[name].extend(part[n_test:])
    names = tuple(str(c) for c in range(10))

    def make(index: list[int], name: str) -> ImageDataset:
        index = np.sort(np.asarray(index))
        return ImageDataset(images[index], labels[index], ids[index], name, names)

    return {
        name: DataSplit(make(pools[name], f"digits/{name}/train"), make(tests[name], f"digits/{name}/test"), 10)
        for name in POOLS
    }


@register_dataset("digits")
def read_digits(data_root: Path, pool: str = "evaluation") -> DataSplit:
    """One pool of the digits split (``data_root`` is unused: the data ships with scikit-learn)."""
    if pool not in POOLS:
        raise ConfigError(f"digits has no pool {pool!r}; pools: {', '.join(POOLS)}")
    return _pools()[pool]
