"""ImageFolder trees (one folder per class) and the ImageNet-R / ImageNet-A readers.

Class ids follow the sorted folder names (wnids), as torchvision's ``ImageFolder`` does.
Images go through :mod:`fluxbench.benchmarks.folder_cache`, so each file is decoded
once; sample ids are ``<dataset>/<path relative to the dataset folder>``.

ImageNet-R and ImageNet-A ship without a train/test split. LAMDA-PILOT (and PyCIL's
pre-trained-model code) read a pre-split ``train/`` and ``test/`` tree that CODA-Prompt
made once with a seeded 80/20 shuffle (``random.seed(0)`` over ``os.listdir`` order,
which is not reproducible from the raw archive). So:

- if ``<folder>/train/`` and ``<folder>/test/`` exist (PILOT's released split), they are used as they are;
- otherwise (the raw archive, ``<folder>/<wnid>/*.jpg``) each class is split 80/20 on its own
  sorted file list by a fixed seed (:data:`SPLIT_SEED` mixed with the wnid), so a class's
  split depends on nothing but its own files and every class with two or more images
  has test images.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule, decode_images
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_SEED = 0  # fixed forever: the raw-archive split is part of the benchmark's definition
TEST_FRACTION = 0.2


def dataset_dir(data_root: Path, folder: str, layout: str, source: str) -> Path:
    """``data_root/folder``, or a :class:`DataError` naming the expected layout and where to get the data."""
    if not data_root.is_dir():
        raise DataError(f"data_root {data_root} does not exist; set data_root to the folder that holds {layout} "
                        f"(published at {source})")
    path = data_root / folder
    if not path.is_dir():
        raise DataError(f"{path} does not exist; expected {layout} (published at {source})")
    return path


def class_folders(root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(root: Path, classes: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of ``root/<class>/`` for each class (sorted), and their class positions."""
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"class folder {folder} does not exist")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise DataError(f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files.extend(found)
        labels.extend([label] * len(found))
    return files, np.asarray(labels, dtype=np.int64)


def folder_dataset(
    files: Sequence[Path], labels: np.ndarray, base: Path, name: str, class_names: Sequence[str], rule: ResizeRule
) -> ImageDataset:
    """Decode (or read from the cache) ``files`` into an :class:`ImageDataset` whose ids are paths under ``base``."""
    dataset = name.split("/")[0]
    ids = np.array([f"{dataset}/{Path(f).relative_to(base).as_posix()}" for f in files])
    images = decode_images(files, rule, name=name.replace("/", "-")).images
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), ids, name, tuple(class_names))


def seeded_split(labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a fixed-seed 80/20 train/test split of its sorted files; returns sorted train and test indices."""
    train, test = [], []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(name.encode())])
        members = members[rng.permutation(len(members))]
        n_test = round(TEST_FRACTION * len(members))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def read_split_tree(root: Path, name: str, rule: ResizeRule, train: str = "train", test: str = "test") -> DataSplit:
    """``root/train/<class>/`` and ``root/test/<class>/``; class ids from the sorted training folders."""
    classes = class_folders(root / train)
    if not classes:
        raise DataError(f"{root / train} has no class folders; expected {train}/<class>/<image>")
    missing = sorted(set(classes) - set(class_folders(root / test)))
    if missing:
        raise DataError(f"{root / test} lacks class folders {missing[:5]} that {root / train} has")
    train_files, train_labels = list_images(root / train, classes)
    test_files, test_labels = list_images(root / test, classes)
    return DataSplit(
        folder_dataset(train_files, train_labels, root, f"{name}/train", classes, rule),
        folder_dataset(test_files, test_labels, root, f"{name}/test", classes, rule),
        len(classes),
    )


def _read_hendrycks(data_root: Path, folder: str, name: str, source: str, rule: ResizeRule) -> DataSplit:
    layout = f"{folder}/<wnid>/<image>.jpg (the raw archive) or {folder}/train/<wnid>/ and {folder}/test/<wnid>/"
    root = dataset_dir(data_root, folder, layout, source)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return read_split_tree(root, name, rule)
    classes = class_folders(root)
    if not classes:
        raise DataError(f"{root} has no class folders; expected {layout}")
    files, labels = list_images(root, classes)
    train, test = seeded_split(labels, classes)
    return DataSplit(
        folder_dataset([files[i] for i in train], labels[train], root, f"{name}/train", classes, rule),
        folder_dataset([files[i] for i in test], labels[test], root, f"{name}/test", classes, rule),
        len(classes),
    )


@register_dataset("imagenet_r")
def read_imagenet_r(
    data_root: Path, folder: str = "imagenet-r", image_size: int = 224, crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> DataSplit:
    """ImageNet-R (renditions of 200 ImageNet classes, 30,000 images), split 80/20 as described above."""
    source = "https://github.com/hendrycks/imagenet-r"
    return _read_hendrycks(data_root, folder, "imagenet_r", source, ResizeRule(image_size, crop_pct, interpolation))


@register_dataset("imagenet_a")
def read_imagenet_a(
    data_root: Path, folder: str = "imagenet-a", image_size: int = 224, crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> DataSplit:
    """ImageNet-A (natural adversarial examples of 200 ImageNet classes, 7,500 images), split 80/20 as above."""
    source = "https://github.com/hendrycks/natural-adv-examples"
    return _read_hendrycks(data_root, folder, "imagenet_a", source, ResizeRule(image_size, crop_pct, interpolation))
