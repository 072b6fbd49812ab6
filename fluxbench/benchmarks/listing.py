"""A dataset listed before it is decoded: file paths (or in-memory arrays) and labels per split.

Few-shot streams (``benchmark=mtil``: 5 or 16 images per class) use a tiny part of each training set, and
decoding all 75,750 Food-101 training JPEGs to keep 505 of them would cost minutes and gigabytes. So the
MTIL readers first *list* a dataset (:class:`Listing`: class names, and per split the files and labels as
the release's annotation files give them), the stream picks its samples, and only those are decoded, through
:mod:`fluxbench.benchmarks.folder_cache` like every other image reader. :func:`register_listing` also
registers the whole dataset as an ordinary reader (``load_dataset({"dataset": "dtd"}, data_root)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import folder_dataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import DataError

RANDOM_SPLIT_SEED = 42  # ZSCL's split_dataset: torch.utils.data.random_split(..., manual_seed(42)), 80/20


@dataclass(frozen=True)
class Part:
    """One split: image ``files`` (decoded on demand, ids relative to ``base``) or decoded ``arrays``."""

    labels: np.ndarray
    files: tuple[Path, ...] = ()
    base: Path | None = None
    arrays: np.ndarray | None = None  # (N, H, W, C) uint8, for archives that hold pixels (MNIST, CIFAR)

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, index: np.ndarray, rule: ResizeRule, name: str, classnames: Sequence[str]) -> ImageDataset:
        """The samples ``index`` at ``rule``'s size; ids are ``<dataset>/<path under base>`` or ``<name>/<i>``."""
        index = np.asarray(index, dtype=np.int64)
        labels = self.labels[index]
        if self.arrays is None:
            files = [self.files[i] for i in index]
            return folder_dataset(files, labels, self.base or Path("/"), name, classnames, rule)
        images = resize_arrays(self.arrays[index], rule)
        ids = np.array([f"{name}/{i}" for i in index])
        return ImageDataset(images, labels, ids, name, tuple(classnames))


def resize_arrays(images: np.ndarray, rule: ResizeRule) -> np.ndarray:
    """Decoded images through the same resize-and-crop rule as files (in memory: only the chosen samples)."""
    if images.shape[1:3] == (rule.image_size, rule.image_size) and images.shape[3] == 3:
        return images
    out = np.empty((len(images), rule.image_size, rule.image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = rule.apply(Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB"))
    return out


@dataclass(frozen=True)
class Listing:
    """A dataset's class names (index = label) and its train and test parts, nothing decoded yet."""

    name: str
    classnames: tuple[str, ...]
    train: Part
    test: Part

    def part(self, split: str) -> Part:
        return self.train if split == "train" else self.test

    def decode(self, split: str, rule: ResizeRule, index: np.ndarray | None = None) -> ImageDataset:
        part = self.part(split)
        index = np.arange(len(part)) if index is None else index
        return part.decode(index, rule, f"{self.name}/{split}", self.classnames)


def need(path: Path, layout: str, source: str) -> Path:
    """``path`` itself, or a one-line :class:`DataError` naming it, the layout and where it is published."""
    if not path.exists():
        raise DataError(f"{path} does not exist; expected {layout} (published at {source})")
    return path


def read_lines(path: Path, layout: str, source: str) -> list[str]:
    """Non-empty, non-comment lines of a text annotation file."""
    text = need(path, layout, source).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def random_split(n: int, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The index sets of ``torch.utils.data.random_split(range(n), [int(ratio n), rest], manual_seed(42))``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(RANDOM_SPLIT_SEED)).numpy()
    cut = int(ratio * n)
    return order[:cut], order[cut:]


def split_files(files: Sequence[Path], labels: np.ndarray, base: Path, index: np.ndarray) -> Part:
    return Part(np.asarray(labels, dtype=np.int64)[index], tuple(files[i] for i in index), base)


Lister = Callable[..., Listing]


def register_listing(name: str, image_size: int = 224, crop_pct: float = 1.0) -> Callable[[Lister], Lister]:
    """Register ``lister(data_root, **options) -> Listing`` and, as reader ``name``, the whole decoded dataset."""

    def wrap(lister: Lister) -> Lister:
        def reader(data_root: Path, image_size: int = image_size, crop_pct: float = crop_pct,
                   interpolation: str = "bicubic", **options: Any) -> DataSplit:
            listing = lister(Path(data_root), **options)
            rule = ResizeRule(image_size, crop_pct, interpolation)
            return DataSplit(listing.decode("train", rule), listing.decode("test", rule), len(listing.classnames))

        reader.__doc__ = lister.__doc__
        register_dataset(name)(reader)
        return lister

    return wrap
