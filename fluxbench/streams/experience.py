"""What a stream yields: one experience at a time."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fluxbench.batching import iterate_batches, to_device, to_float
from fluxbench.benchmarks.base import ImageDataset

BatchTransform = Callable[[torch.Tensor], torch.Tensor]
PROMPTS_KEY = "prompts"  # metadata of a prompted (CLIP) experience: the text of each of its classes
__all__ = ["PROMPTS_KEY", "BatchTransform", "Experience", "iterate_batches", "to_float"]


@dataclass
class Experience:
    """One step of a stream.

    Labels in ``train``/``test`` are *stream labels*: class-incremental streams relabel
    classes by their position in the class order, so experience ``i`` holds the
    contiguous range ``classes_seen_before .. classes_seen_before + len(classes) - 1``.
    ``classes`` keeps the original class ids; ``metadata`` says where the data came from.
    ``train_transform`` (batched, on tensors) is applied to training batches only.
    ``earlier`` holds the stream's previous experiences, for reference points such as joint training
    (like avalanche's ``origin_stream``); a continual-learning method must not read it.
    """

    index: int
    train: ImageDataset | None
    test: ImageDataset
    classes: tuple[int, ...]
    num_seen_classes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    train_transform: BatchTransform | None = None
    earlier: tuple[Experience, ...] = field(default=(), repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def new_class_range(self) -> range:
        return range(self.num_seen_classes - len(self.classes), self.num_seen_classes)

    def uint8_tensors(self, part: str, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """A part as uint8 ``(N, C, H, W)`` on ``device``, made once per experience: 4x smaller than floats.

        Only this experience's rows are read (a subset of a memory map is read here, not before); to a GPU
        they go once, through pinned memory.
        """
        key = (part, str(device))
        if key not in self._cache:
            data = self._part(part)
            x = to_device(torch.from_numpy(np.ascontiguousarray(data.images)), device)
            y = to_device(torch.from_numpy(np.asarray(data.labels, dtype=np.int64)), device)
            self._cache[key] = (x.permute(0, 3, 1, 2).contiguous(), y)
        return self._cache[key]

    def crop_tensors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The training part's crop source as uint8 ``(N, C, S, S)`` on ``device`` (channels-last, as cached) and
        the original ``(height, width)`` of each image on the CPU; ``None`` when the data has no crop source."""
        crops = self._part("train").crops
        if crops is None:
            return None
        key = ("crops", str(device))
        if key not in self._cache:
            x = to_device(torch.from_numpy(np.ascontiguousarray(crops.images)), device)
            self._cache[key] = (x.permute(0, 3, 1, 2), torch.from_numpy(np.asarray(crops.sizes, dtype=np.int64)))
        return self._cache[key]

    def _part(self, part: str) -> ImageDataset:
        data = self.train if part == "train" else self.test
        if data is None or len(data) == 0:
            raise ValueError(f"experience {self.index} has no {part} data")
        return data

    def tensors(self, part: str = "train", device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images of a part as float tensors in [0, 1] (``(N, C, H, W)``) and their labels."""
        x, y = self.uint8_tensors(part, device)
        return to_float(x), y

    def train_batches(
        self, batch_size: int, device: torch.device | str = "cpu", shuffle: bool = True, drop_last: bool = False,
        augment: bool = True,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches of the training part, augmented by ``train_transform`` unless ``augment`` is off
        (statistics such as class prototypes are computed on clean images).

        Shuffling draws from torch's global generator, which the protocol seeds. A transform that crops whole
        images (``takes_geometry``) crops the crop source when the data has one, on each original geometry.
        """
        x, y = self.uint8_tensors("train", device)
        transform = self.train_transform if augment else None
        source = self.crop_tensors(device) if getattr(transform, "takes_geometry", False) else None
        if source is None:
            yield from iterate_batches(x, y, batch_size, shuffle, drop_last, transform)
            return
        crop = functools.partial(transform, size=x.shape[-1])  # the evaluation view's size, unless the config says
        yield from iterate_batches(source[0], y, batch_size, shuffle, drop_last, crop, sizes=source[1])

    def test_batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.uint8_tensors("test", device)
        yield from iterate_batches(x, y, batch_size, shuffle=False)
