"""CUB-200-2011 in its released layout, with the official train/test split.

Layout (``CUB_200_2011.tgz`` from https://www.vision.caltech.edu/datasets/cub_200_2011/)::

    <data_root>/CUB_200_2011/images.txt               # <image id> <path under images/>
    <data_root>/CUB_200_2011/train_test_split.txt     # <image id> <1 train | 0 test>
    <data_root>/CUB_200_2011/image_class_labels.txt   # <image id> <class id, 1-based>
    <data_root>/CUB_200_2011/classes.txt              # <class id> <name>   (optional: names only)
    <data_root>/CUB_200_2011/images/<class>/<image>.jpg

Class ids are the released 1-based ids minus one; samples keep image-id order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import crop_rule, dataset_dir, folder_dataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import DataError

SOURCE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
_TABLES = ("images.txt", "train_test_split.txt", "image_class_labels.txt")


def read_table(path: Path) -> dict[int, str]:
    """``<integer id> <value>`` per line -> ``{id: value}``; a malformed line is a :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; extract CUB_200_2011.tgz from {SOURCE}")
    table: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value.strip():
            raise DataError(f"{path}, line {number}: expected '<id> <value>', got {line.strip()[:60]!r}")
        table[int(key)] = value.strip()
    return table


def _labels(table: dict[int, str], path: Path) -> dict[int, int]:
    labels = {}
    for key, value in table.items():
        if not value.isdigit() or int(value) < 1:
            raise DataError(f"{path}: image {key} has class {value!r}; class ids are integers from 1")
        labels[key] = int(value) - 1
    return labels


def _class_names(root: Path, num_classes: int) -> tuple[str, ...]:
    names = read_table(root / "classes.txt") if (root / "classes.txt").is_file() else {}
    return tuple(names.get(c + 1, str(c)) for c in range(num_classes))


@register_dataset("cub200")
def read_cub200(
    data_root: Path, folder: str = "CUB_200_2011", image_size: int = 224, crop_pct: float = 0.875,
    interpolation: str = "bicubic", train_crops: str = "full", crop_source_size: int = 256,
) -> DataSplit:
    """CUB-200-2011: 5,994 training and 5,794 test images of 200 bird species (the official split); training
    crops from the whole image unless ``train_crops: centre`` (see :mod:`fluxbench.benchmarks.imagefolder`)."""
    rule = ResizeRule(image_size, crop_pct, interpolation)
    crops = crop_rule(train_crops, crop_source_size, interpolation)
    layout = f"{folder}/images.txt, train_test_split.txt, image_class_labels.txt and images/"
    root = dataset_dir(data_root, folder, layout, SOURCE)
    images, is_train, classes = (read_table(root / name) for name in _TABLES)
    if not images:
        raise DataError(f"{root / 'images.txt'} lists no images; extract a fresh CUB_200_2011.tgz from {SOURCE}")
    labels = _labels(classes, root / "image_class_labels.txt")
    for name, table in zip(_TABLES[1:], (is_train, labels)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DataError(f"{root / name} has no entry for image ids {missing[:5]}")
    bad = sorted(k for k in images if is_train[k] not in ("0", "1"))
    if bad:
        raise DataError(f"{root / 'train_test_split.txt'}: image ids {bad[:5]} are neither 1 (train) nor 0 (test)")
    num_classes = max(labels[k] for k in images) + 1
    names = _class_names(root, num_classes)
    parts = {}
    for part, flag in (("train", "1"), ("test", "0")):
        keys = sorted(k for k in images if is_train[k] == flag)
        if not keys:
            raise DataError(f"{root / 'train_test_split.txt'} marks no image as {part}")
        files = [root / "images" / images[k] for k in keys]
        part_labels = np.array([labels[k] for k in keys], dtype=np.int64)
        parts[part] = folder_dataset(files, part_labels, root / "images", f"cub200/{part}", names, rule,
                                     crops if part == "train" else None)
    return DataSplit(parts["train"], parts["test"], num_classes, "official")
