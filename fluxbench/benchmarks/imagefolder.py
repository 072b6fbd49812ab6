"""ImageFolder trees (one folder per class) and the ImageNet-R / ImageNet-A readers.

Class ids follow the sorted folder names (wnids), as torchvision's ``ImageFolder`` does.
Images go through :mod:`fluxbench.benchmarks.folder_cache`, so each file is decoded
once; sample ids are ``<dataset>/<path relative to the dataset folder>``.

ImageNet-R and ImageNet-A ship without a train/test split. LAMDA-PILOT (and PyCIL's
pre-trained-model code) read a pre-split ``train/`` and ``test/`` tree that CODA-Prompt
made once with a seeded 80/20 shuffle (``random.seed(0)`` over ``os.listdir`` order,
which is not reproducible from the raw archive). So:

- if ``<folder>/train/`` and ``<folder>/test/`` exist (PILOT's released split), they are used as they are;
- else if ``<folder>/train.txt`` and ``<folder>/test.txt`` exist (the same split as file lists), each
  line names an image by its path under ``<folder>`` (``<wnid>/<file>``, or ``train/<wnid>/<file>``),
  optionally followed by a label, which is not read: the class is the image's folder, ids follow the
  sorted wnids as above;
- otherwise (the raw archive, ``<folder>/<wnid>/*.jpg``) each class is split 80/20 on its own
  sorted file list by a fixed seed (:data:`SPLIT_SEED` mixed with the wnid), so a class's
  split depends on nothing but its own files and every class with two or more images
  has test images.

Which one was read is :attr:`DataSplit.data_split` (``pilot_released`` or ``seeded_80_20``), a run tag.

Training images also get a crop source (``train_crops: full``, the default): the whole image at
``crop_source_size`` square with its original size, so random crops are drawn on the file's geometry
as torchvision does. ``train_crops: centre`` crops the evaluation view instead (the old behaviour, no
extra cache). Evaluation images are the resize + centre crop either way.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import CropSource, DataSplit, ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule, WholeImageRule, decode_images, image_sizes
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_SEED = 0  # fixed forever: the raw-archive split is part of the benchmark's definition
TEST_FRACTION = 0.2
PILOT_RELEASED, SEEDED_80_20 = "pilot_released", "seeded_80_20"
TRAIN_CROPS = ("full", "centre")


def crop_rule(train_crops: str, crop_source_size: int, interpolation: str) -> WholeImageRule | None:
    """The crop source's rule for ``train_crops: full``; ``None`` for ``centre`` (crops of the evaluation view)."""
    if train_crops not in TRAIN_CROPS:
        raise ConfigError(f"train_crops must be one of {', '.join(TRAIN_CROPS)}, got {train_crops!r}")
    return WholeImageRule(crop_source_size, interpolation) if train_crops == "full" else None


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
    files: Sequence[Path], labels: np.ndarray, base: Path, name: str, class_names: Sequence[str], rule: ResizeRule,
    crops: WholeImageRule | None = None,
) -> ImageDataset:
    """Decode (or read from the cache) ``files`` into an :class:`ImageDataset` whose ids are paths under ``base``;
    with ``crops``, also the crop source of training augmentation."""
    dataset, key = name.split("/")[0], name.replace("/", "-")
    ids = np.array([f"{dataset}/{Path(f).relative_to(base).as_posix()}" for f in files])
    images = decode_images(files, rule, name=key).images
    source = None
    if crops is not None:
        source = CropSource(decode_images(files, crops, name=f"{key}-whole").images, image_sizes(files, name=key))
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), ids, name, tuple(class_names), source)


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


def read_split_tree(
    root: Path, name: str, rule: ResizeRule, train: str = "train", test: str = "test",
    crops: WholeImageRule | None = None,
) -> DataSplit:
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
        folder_dataset(train_files, train_labels, root, f"{name}/train", classes, rule, crops),
        folder_dataset(test_files, test_labels, root, f"{name}/test", classes, rule),
        len(classes),
    )


def read_list(root: Path, path: Path) -> list[Path]:
    """The image files a split list names (first token per non-empty line, a path under ``root``)."""
    files = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        file = root / line.split()[0]
        if not file.is_file():
            raise DataError(f"{path}, line {number}: {file} does not exist")
        files.append(file)
    if not files:
        raise DataError(f"{path} lists no images; expected one <wnid>/<image> path per line")
    return files


def read_split_lists(root: Path, name: str, rule: ResizeRule, crops: WholeImageRule | None = None) -> DataSplit:
    """``root/train.txt`` and ``root/test.txt``; an image's class is its folder, ids from the sorted folders."""
    train_files, test_files = read_list(root, root / "train.txt"), read_list(root, root / "test.txt")
    classes = sorted({f.parent.name for f in train_files})
    missing = sorted({f.parent.name for f in test_files} - set(classes))
    if missing:
        raise DataError(f"{root / 'test.txt'} names classes {missing[:5]} that {root / 'train.txt'} has no images of")
    position = {c: i for i, c in enumerate(classes)}

    def labels(files: list[Path]) -> np.ndarray:
        return np.array([position[f.parent.name] for f in files], dtype=np.int64)

    return DataSplit(
        folder_dataset(train_files, labels(train_files), root, f"{name}/train", classes, rule, crops),
        folder_dataset(test_files, labels(test_files), root, f"{name}/test", classes, rule),
        len(classes), PILOT_RELEASED,
    )


def _read_hendrycks(
    data_root: Path, folder: str, name: str, source: str, rule: ResizeRule, crops: WholeImageRule | None
) -> DataSplit:
    layout = f"{folder}/<wnid>/<image>.jpg (the raw archive) or {folder}/train/<wnid>/ and {folder}/test/<wnid>/"
    root = dataset_dir(data_root, folder, layout, source)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return replace(read_split_tree(root, name, rule, crops=crops), data_split=PILOT_RELEASED)
    if (root / "train.txt").is_file() and (root / "test.txt").is_file():
        return read_split_lists(root, name, rule, crops)
    classes = class_folders(root)
    if not classes:
        raise DataError(f"{root} has no class folders; expected {layout}")
    files, labels = list_images(root, classes)
    train, test = seeded_split(labels, classes)
    return DataSplit(
        folder_dataset([files[i] for i in train], labels[train], root, f"{name}/train", classes, rule, crops),
        folder_dataset([files[i] for i in test], labels[test], root, f"{name}/test", classes, rule),
        len(classes), SEEDED_80_20,
    )


@register_dataset("imagenet_r")
def read_imagenet_r(
    data_root: Path, folder: str = "imagenet-r", image_size: int = 224, crop_pct: float = 0.875,
    interpolation: str = "bicubic", train_crops: str = "full", crop_source_size: int = 256,
) -> DataSplit:
    """ImageNet-R (renditions of 200 ImageNet classes, 30,000 images), split 80/20 as described above."""
    source = "https://github.com/hendrycks/imagenet-r"
    rule = ResizeRule(image_size, crop_pct, interpolation)
    crops = crop_rule(train_crops, crop_source_size, interpolation)
    return _read_hendrycks(data_root, folder, "imagenet_r", source, rule, crops)


@register_dataset("imagenet_a")
def read_imagenet_a(
    data_root: Path, folder: str = "imagenet-a", image_size: int = 224, crop_pct: float = 0.875,
    interpolation: str = "bicubic", train_crops: str = "full", crop_source_size: int = 256,
) -> DataSplit:
    """ImageNet-A (natural adversarial examples of 200 ImageNet classes, 7,500 images), split 80/20 as above."""
    source = "https://github.com/hendrycks/natural-adv-examples"
    rule = ResizeRule(image_size, crop_pct, interpolation)
    crops = crop_rule(train_crops, crop_source_size, interpolation)
    return _read_hendrycks(data_root, folder, "imagenet_a", source, rule, crops)
