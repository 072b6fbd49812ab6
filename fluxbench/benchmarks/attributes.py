"""Images that carry several binary attributes each (CelebA): one binary task per attribute.

A :class:`DataSplit` holds one label per image; an :class:`AttributeSplit` adds the 0/1 attribute matrix of each
part. Its label space is two classes per attribute (``2i`` = attribute ``i`` absent, ``2i + 1`` = present), so a
stream of attribute tasks looks to methods and protocols like any stream of class pairs; the parts' own labels
are the first attribute's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fluxbench.benchmarks.base import DataSplit
from fluxbench.errors import DataError


@dataclass(frozen=True)
class AttributeSplit(DataSplit):
    """``train_attributes`` / ``test_attributes``: ``(N, A)`` 0/1 arrays, columns named by ``attribute_names``."""

    train_attributes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8), repr=False)
    test_attributes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8), repr=False)
    attribute_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part, attrs in ((self.train, self.train_attributes), (self.test, self.test_attributes)):
            if attrs.shape != (len(part), len(self.attribute_names)):
                raise DataError(f"{part.name}: attributes of shape {attrs.shape}, expected "
                                f"({len(part)}, {len(self.attribute_names)})")
        if self.num_classes != 2 * len(self.attribute_names):
            raise DataError(f"{len(self.attribute_names)} attributes make {2 * len(self.attribute_names)} classes, "
                            f"not {self.num_classes}")

    def fingerprint(self) -> str:
        # the labels of the tasks are the attributes: they are part of the data's identity
        digest = hashlib.blake2b(super().fingerprint().encode(), digest_size=12)
        for part, attrs in ((self.train, self.train_attributes), (self.test, self.test_attributes)):
            order = np.argsort(part.sample_hashes(), kind="stable")
            digest.update(np.ascontiguousarray(attrs[order], dtype=np.int8).tobytes())
        digest.update(",".join(self.attribute_names).encode())
        return digest.hexdigest()
