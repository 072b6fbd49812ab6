"""The in-memory form every reader produces: uint8 images, labels, stable sample ids.

Readers decode their on-disk format once into :class:`ImageDataset` (images as a
``(N, H, W, C)`` uint8 array, possibly memory-mapped). Everything downstream (streams,
corruptions, methods) works on that one form, so a new dataset is only a new reader.

A subset of a memory-mapped dataset is a :class:`RowView` (the map and a row index), so cutting
ImageNet-R into class groups and experiences reads nothing until an experience's tensors are made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fluxbench.errors import DataError


class RowView:
    """Rows ``index`` of ``base`` (``(N, ...)``), read only when used: ``np.asarray``, indexing, ``len``, ``shape``.

    Indexing returns ordinary arrays (only the rows asked for are read), so code written for arrays works on it.
    """

    __slots__ = ("base", "index")

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.base.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        rows = self.base[self.index]
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        picked = self.index[first]
        rows = self.base[picked]
        if not rest:
            return rows
        return rows[rest] if np.ndim(picked) == 0 else rows[(slice(None), *rest)]

    def rows(self, index: np.ndarray) -> RowView:
        return RowView(self.base, self.index[index])


Images = np.ndarray | RowView


def take_rows(images: Images, index: np.ndarray) -> Images:
    """``images[index]``, lazily for a memory map (a :class:`RowView`), as a copy for an array in memory."""
    if isinstance(images, RowView):
        return images.rows(index)
    if isinstance(images, np.memmap):
        return RowView(images, index)
    return images[index]


@dataclass(frozen=True)
class CropSource:
    """Each sample's whole image resized to a fixed square (``images``, ``(N, S, S, C)`` uint8) and its original
    ``(height, width)`` (``sizes``, ``(N, 2)``): random training crops are drawn on the original geometry, as
    torchvision's ``RandomResizedCrop`` on the file does, not on the evaluation view's centre crop."""

    images: Images
    sizes: np.ndarray

    def subset(self, index: np.ndarray) -> CropSource:
        return CropSource(take_rows(self.images, index), self.sizes[index])


@dataclass(frozen=True)
class ImageDataset:
    """Images ``(N, H, W, C)`` uint8, integer ``labels`` and one stable id per sample.

    ``images`` is the evaluation view (for folder data: resize and centre crop). ``crops``, when a reader
    provides it, is what training augmentation crops from instead.
    """

    images: Images
    labels: np.ndarray
    ids: np.ndarray
    name: str
    class_names: tuple[str, ...] = ()
    crops: CropSource | None = field(default=None, repr=False, compare=False)
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
        """The samples at ``index``; a memory map stays on disk (see :func:`take_rows`)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageDataset(
            images=take_rows(self.images, index), labels=self.labels[index], ids=self.ids[index],
            name=name or self.name, class_names=self.class_names,
            crops=self.crops.subset(index) if self.crops is not None else None,
        )

    def with_labels(self, labels: np.ndarray) -> ImageDataset:
        """The same samples under other labels (sample hashes are pixels only, so they are shared)."""
        return replace(self, labels=np.asarray(labels, dtype=np.int64), _hashes=self._hashes)

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
        return replace(out, labels=mapping[out.labels], class_names=names)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] as ``(N, C, H, W)`` and int64 labels."""
        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(np.asarray(self.labels, dtype=np.int64))

    def sample_hashes(self) -> np.ndarray:
        """One 64-bit content hash per image (pixels and shape; not the label or the name)."""
        if "samples" not in self._hashes:
            shape = repr(tuple(self.images.shape[1:])).encode()
            # row by row: a memory-mapped dataset is hashed without a copy of it in memory
            digests = [hashlib.blake2b(shape + np.ascontiguousarray(self.images[i]).tobytes(), digest_size=8).digest()
                       for i in range(len(self))]
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
    data_split: str = ""  # how train and test were separated (pilot_released, seeded_80_20, official); run tag
    class_aliases: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        both = (self.train.fingerprint() + self.test.fingerprint()).encode()
        return hashlib.blake2b(both, digest_size=12).hexdigest()

    def sample_hashes(self) -> np.ndarray:
        return np.concatenate([self.train.sample_hashes(), self.test.sample_hashes()])


def shared_samples(a: DataSplit, b: DataSplit) -> int:
    """How many images of ``b`` also appear (same pixels) in ``a``."""
    return int(np.isin(b.sample_hashes(), a.sample_hashes()).sum())
