"""Class-incremental streams: a seeded class order cut into experiences.

Scenarios are named as in the literature: ``B0-Inc10`` has ten new classes per
experience from the start, ``B50-Inc10`` a first experience of fifty classes and ten
per experience after it. Labels are remapped to positions in the class order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fluxbench.benchmarks.base import DataSplit
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.experience import BatchTransform, Experience

_SCENARIO = re.compile(r"^B(\d+)-Inc(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ClassIncrementalScenario:
    """``initial_classes`` in the first experience (0 means ``increment``), then ``increment`` each."""

    increment: int
    initial_classes: int = 0
    num_experiences: int | None = None

    @classmethod
    def parse(cls, name: str, num_experiences: int | None = None) -> ClassIncrementalScenario:
        match = _SCENARIO.match(name.strip())
        if not match:
            raise ConfigError(f"scenario must look like B0-Inc10 or B50-Inc10, got {name!r}")
        return cls(increment=int(match.group(2)), initial_classes=int(match.group(1)), num_experiences=num_experiences)

    def experience_sizes(self, num_classes: int) -> list[int]:
        if self.increment <= 0 or self.initial_classes < 0:
            raise ConfigError(f"increment must be > 0 and initial classes >= 0, got {self}")
        first = self.initial_classes or self.increment
        if first > num_classes:
            raise DataError(f"the scenario needs {first} classes in its first experience; the data has {num_classes}")
        sizes = [first]
        while sum(sizes) < num_classes:
            sizes.append(min(self.increment, num_classes - sum(sizes)))
        if self.num_experiences is not None:
            if self.num_experiences > len(sizes):
                raise DataError(
                    f"{self.num_experiences} experiences of {self.increment} classes need "
                    f"{first + self.increment * (self.num_experiences - 1)} classes; the data has {num_classes}"
                )
            sizes = sizes[: self.num_experiences]
        return sizes


def class_order(num_classes: int, seed: int | None) -> list[int]:
    """The seeded permutation of class ids (``None`` keeps the natural order)."""
    if seed is None:
        return list(range(num_classes))
    return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]


def class_incremental_stream(
    split: DataSplit,
    scenario: ClassIncrementalScenario,
    order: list[int],
    dataset_name: str = "",
    train_transform: BatchTransform | None = None,
) -> list[Experience]:
    """Cut ``split`` into experiences following ``order`` (a permutation of class ids, or a prefix of one)."""
    sizes = scenario.experience_sizes(len(order))
    unknown = sorted(set(order) - set(range(split.num_classes)))
    if unknown or len(set(order)) != len(order):
        raise DataError(f"the class order must list distinct classes of 0..{split.num_classes - 1}; bad: {unknown[:5]}")
    experiences = []
    seen = 0
    for index, size in enumerate(sizes):
        classes = order[seen:seen + size]
        seen += size
        remap = {c: order.index(c) for c in classes}
        train = _select(split.train, classes, remap)
        test = _select(split.test, classes, remap)
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"experience {index} (classes {classes}) has no training or no test samples")
        experiences.append(Experience(
            index=index, train=train, test=test, classes=tuple(classes), num_seen_classes=seen,
            metadata={"dataset": dataset_name, "classes": list(classes)}, train_transform=train_transform,
            earlier=tuple(experiences),
        ))
    return experiences


def _select(data, classes: list[int], remap: dict[int, int]):
    part = data.subset(np.flatnonzero(np.isin(data.labels, classes)))
    labels = np.array([remap[int(c)] for c in part.labels], dtype=np.int64)
    return part.with_labels(labels)
