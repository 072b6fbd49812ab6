"""CIFAR-10 and CIFAR-100, the "python version" archives, read as they are on disk.

Layouts (https://www.cs.toronto.edu/~kriz/cifar.html, the ``*-python.tar.gz`` files)::

    <data_root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   # labels, label_names
    <data_root>/cifar-100-python/{train, test, meta}                            # fine_labels, fine_label_names

Each batch is a pickled dict whose ``data`` is a ``(N, 3072)`` uint8 array (channel-major
rows of 32x32 images). The pickles are read with a restricted unpickler
(:mod:`fluxbench.benchmarks.safe_pickle`), so a tampered file cannot run code. Sample
ids are ``cifar100/train/<index in the file order>``, stable across machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.benchmarks.safe_pickle import load_pickle
from fluxbench.errors import DataError

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _dataset_dir(data_root: Path, folder: str, archive: str) -> Path:
    if not data_root.is_dir():
        raise DataError(f"data_root {data_root} does not exist; set data_root to the folder that holds {folder}/ "
                        f"(extracted from {archive}, {_URL})")
    path = data_root / folder
    if not path.is_dir():
        raise DataError(
            f"{path} does not exist; expected {folder}/ extracted from {archive} (the python version, {_URL})"
        )
    return path


def _hint(archive: str) -> str:
    return f"extract a fresh copy of {archive} from {_URL}"


def _read_batch(path: Path, label_key: str, num_classes: int, archive: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> ``(N, 32, 32, 3)`` uint8 images and int64 labels."""
    batch = load_pickle(path, _hint(archive))
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path} is not a CIFAR batch (needs keys 'data' and {label_key!r}); {_hint(archive)}")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a (N, 3072) uint8 array, got {shape}; {_hint(archive)}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {label_key!r} is not a list of integers; {_hint(archive)}") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; {_hint(archive)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}; {_hint(archive)}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(path: Path, key: str, num_classes: int, archive: str) -> tuple[str, ...]:
    meta: Any = load_pickle(path, _hint(archive))
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path}: {key!r} must list {num_classes} class names; {_hint(archive)}")
    return tuple(str(n) for n in names)


def _read(
    root: Path, name: str, parts: dict[str, list[str]], meta: str, label_key: str, names_key: str, num_classes: int,
    archive: str,
) -> DataSplit:
    class_names = _class_names(root / meta, names_key, num_classes, archive)
    datasets = {}
    for part, files in parts.items():
        batches = [_read_batch(root / f, label_key, num_classes, archive) for f in files]
        images = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
        labels = np.concatenate([b[1] for b in batches])
        ids = np.array([f"{name}/{part}/{i}" for i in range(len(labels))])
        datasets[part] = ImageDataset(images, labels, ids, f"{name}/{part}", class_names)
    return DataSplit(datasets["train"], datasets["test"], num_classes)


@register_dataset("cifar10")
def read_cifar10(data_root: Path) -> DataSplit:
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes."""
    archive = "cifar-10-python.tar.gz"
    root = _dataset_dir(data_root, "cifar-10-batches-py", archive)
    parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    return _read(root, "cifar10", parts, "batches.meta", "labels", "label_names", 10, archive)


@register_dataset("cifar100")
def read_cifar100(data_root: Path) -> DataSplit:
    """CIFAR-100 (fine labels): 50,000 training and 10,000 test images of 100 classes."""
    archive = "cifar-100-python.tar.gz"
    root = _dataset_dir(data_root, "cifar-100-python", archive)
    parts = {"train": ["train"], "test": ["test"]}
    return _read(root, "cifar100", parts, "meta", "fine_labels", "fine_label_names", 100, archive)
