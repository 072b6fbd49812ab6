"""The in-memory form every reader produces: uint8 images, labels, stable sample ids.

Readers decode their on-disk format once into :class:`ImageDataset` (images as a
``(N, H, W, C)`` uint8 array, possibly memory-mapped). Everything downstream (streams,
corruptions, methods) works on that one form, so a new dataset is only a new reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fluxbench.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Images ``(N, H, W, C)`` uint8, integer ``labels`` and one stable id per sample."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    name: str
    class_names: tuple[str, ...] = ()
    _hashes: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"{self.name}: images must be (N, H, W, C) uint8, got {self.images.dtype} {self.images.shape}"
            )
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise DataError(f"{self.name}: {len(self.images)} images, {len(self.labels)} labels, {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def subset(self, index: np.ndarray | Sequence[int], name: str | None = None) -> ImageDataset:
        index = np.asarray(index, dtype=np.int64)
        return ImageDataset(
            images=self.images[index], labels=self.labels[index], ids=self.ids[index],
            name=name or self.name, class_names=self.class_names,
        )

    def with_classes(self, classes: Sequence[int], relabel: bool = True) -> ImageDataset:
        """Keep only ``classes``; with ``relabel`` they become 0..len(classes)-1 in the given order."""
        classes = np.asarray(list(classes), dtype=np.int64)
        keep = np.flatnonzero(np.isin(self.labels, classes))
        out = self.subset(keep)
        if not relabel:
            return out
        mapping = np.full(int(max(classes.max(), self.labels.max(initial=-1))) + 1, -1, dtype=np.int64)
        mapping[classes] = np.arange(len(classes))
        names = tuple(self.class_names[c] for c in classes) if self.class_names else ()
        return ImageDataset(out.images, mapping[out.labels], out.ids, self.name, names)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] as ``(N, C, H, W)`` and int64 labels."""
        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(np.asarray(self.labels, dtype=np.int64))

    def sample_hashes(self) -> np.ndarray:
        """One 64-bit content hash per image (pixels and shape; not the label or the name)."""
        if "samples" not in self._hashes:
            flat = np.ascontiguousarray(self.images).reshape(len(self), int(np.prod(self.images.shape[1:])))
            shape = repr(self.images.shape[1:]).encode()
            digests = [hashlib.blake2b(shape + row.tobytes(), digest_size=8).digest() for row in flat]
            self._hashes["samples"] = np.array([int.from_bytes(d, "little") for d in digests], dtype=np.uint64)
        return self._hashes["samples"]

    def fingerprint(self) -> str:
        """A content hash of the whole dataset: same samples and labels, same fingerprint, in any order."""
        order = np.lexsort((self.labels, self.sample_hashes()))
        digest = hashlib.blake2b(digest_size=12)
        digest.update(self.sample_hashes()[order].tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64)[order].tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class DataSplit:
    """A train and a test part over the same label space ``0..num_classes-1``.

    ``class_aliases`` maps other names a config may use for a class to its id (TinyImageNet's words for wnids).
    """

    train: ImageDataset
    test: ImageDataset
    num_classes: int
    class_aliases: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        both = (self.train.fingerprint() + self.test.fingerprint()).encode()
        return hashlib.blake2b(both, digest_size=12).hexdigest()

    def sample_hashes(self) -> np.ndarray:
        return np.concatenate([self.train.sample_hashes(), self.test.sample_hashes()])


def shared_samples(a: DataSplit, b: DataSplit) -> int:
    """How many images of ``b`` also appear (same pixels) in ``a``."""
    return int(np.isin(b.sample_hashes(), a.sample_hashes()).sum())
