"""Binary task streams: each experience is one pair of classes, as in IBCL's Split CIFAR-10 / CIFAR-100 tasks.

Lu et al., "IBCL" (arXiv 2305.14782), upstream ``ibcl-anon/ibcl`` ``utils/preprocess_utils.py``: Split CIFAR-10
task ``i`` is classes ``(2i, 2i+1)`` with label ``class - 2i``; Split CIFAR-100 task ``i`` is animal class ``A[i]``
(label 0) against non-animal class ``N[i]`` (label 1). A benchmark states its pairs as ``class_pairs``; the stream
is the class-incremental stream whose class order is the pairs in sequence, two classes per experience, so task
``i``'s 0/1 label is its stream label minus ``2i`` and the stream manifest replays it exactly. A pair may name its
classes by id, by class name (a TinyImageNet wnid) or by an alias the reader gives (a TinyImageNet word).

CelebA's tasks are not class pairs: every image carries all attributes, and task ``i`` is attribute ``i``
(:func:`attribute_task_stream`), stated in the same form (classes ``2i`` = absent, ``2i + 1`` = present), so the
methods and the preference protocol see one kind of binary stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fluxbench.benchmarks.attributes import AttributeSplit
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError
from fluxbench.streams.experience import BatchTransform, Experience


def class_id(name: int | str, class_names: Sequence[str] = (), aliases: Mapping[str, int] | None = None) -> int:
    """A class given by id, by its class name, or by an alias (case-insensitive); -1 when unknown."""
    if isinstance(name, int) or str(name).lstrip("-").isdigit():
        return int(name)
    if name in class_names:
        return list(class_names).index(name)
    return (aliases or {}).get(str(name).strip().lower(), -1)


def pairs_order(pairs: Sequence[Sequence[int | str]], num_classes: int, class_names: Sequence[str] = (),
                aliases: Mapping[str, int] | None = None) -> list[int]:
    """The class order of a binary stream (label 0 then label 1 of each task), validated in one line."""
    order = []
    for k, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ConfigError(f"benchmark.class_pairs[{k}] must be a pair of classes (ids or names); got {pair!r}; "
                              "each task of a binary stream has exactly two classes")
        for c in pair:
            order.append(class_id(c, class_names, aliases))
            if order[-1] < 0:
                raise ConfigError(f"benchmark.class_pairs[{k}]: {c!r} is not a class id, class name or alias of "
                                  "this data set (ambiguous names are not accepted: give the wnid)")
    bad = sorted({c for c in order if not 0 <= c < num_classes})
    if bad or len(set(order)) != len(order):
        raise ConfigError("benchmark.class_pairs must be distinct classes of "
                          f"0..{num_classes - 1}; got {list(pairs)}")
    return order


def consecutive_pairs(num_tasks: int) -> list[list[int]]:
    """Split CIFAR-10's pairs: ``(0, 1), (2, 3), ...``."""
    return [[2 * i, 2 * i + 1] for i in range(num_tasks)]


def attribute_task_stream(split: AttributeSplit, sizes: Sequence[int], dataset_name: str = "",
                          train_transform: BatchTransform | None = None) -> list[Experience]:
    """Task ``i`` = attribute ``i`` of every image: labels ``2i`` (absent) / ``2i + 1`` (present), the images shared."""
    if any(size != 2 for size in sizes):
        raise ConfigError(f"the attribute tasks of {dataset_name or 'this benchmark'} are binary (two classes per "
                          f"experience); this stream asks for experiences of {list(sizes)} classes")
    if len(sizes) > len(split.attribute_names):
        raise ConfigError(f"{len(sizes)} attribute tasks asked for; the benchmark has {len(split.attribute_names)}")
    experiences: list[Experience] = []
    shared: dict = {}  # one uint8 image tensor per part and device for all tasks (CelebA's train part: 2 GB at 64 px)
    for i in range(len(sizes)):
        classes = (2 * i, 2 * i + 1)
        train, test = (_task_part(data, attrs, i) for data, attrs in
                       ((split.train, split.train_attributes), (split.test, split.test_attributes)))
        experiences.append(AttributeExperience(
            index=i, train=train, test=test, classes=classes, num_seen_classes=2 * i + 2,
            metadata={"dataset": dataset_name, "classes": list(classes), "attribute": split.attribute_names[i]},
            train_transform=train_transform, earlier=tuple(experiences), shared_images=shared,
        ))
    return experiences


@dataclass
class AttributeExperience(Experience):
    """An attribute task: its images are every other task's, so their tensor is made once for the whole stream."""

    shared_images: dict = field(default_factory=dict, repr=False, compare=False)

    def uint8_tensors(self, part: str, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (part, str(device))
        if key in self._cache:
            return self._cache[key]
        if key not in self.shared_images:
            self.shared_images[key] = super().uint8_tensors(part, device)[0]
            return self._cache[key]
        labels = (self.train if part == "train" else self.test).labels
        self._cache[key] = (self.shared_images[key], torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device))
        return self._cache[key]


def _task_part(data: ImageDataset, attributes: np.ndarray, i: int) -> ImageDataset:
    # the same image array for every task (no copy): only the labels differ
    labels = 2 * i + np.asarray(attributes[:, i], dtype=np.int64)
    return ImageDataset(data.images, labels, data.ids, data.name, data.class_names)
