"""CIFAR-10-C and CIFAR-100-C, the released ``.npy`` files, read as they are on disk.

Layout (Hendrycks & Dietterich; CIFAR-10-C: https://zenodo.org/record/2535967,
CIFAR-100-C: https://zenodo.org/record/3555552)::

    <data_root>/CIFAR-10-C/<corruption>.npy    # uint8 (50000, 32, 32, 3): severity 1 rows, then 2, ... 5
    <data_root>/CIFAR-10-C/labels.npy          # uint8 (50000,): the 10,000 test labels, five times

Severity ``s`` is rows ``[(s - 1) * n, s * n)`` with ``n = len(file) // 5`` (10,000 for
the release). Files are memory-mapped, never pickled (``allow_pickle=False``). The reader
returns a :class:`DataSplit` whose ``test`` part is the corrupted test set and whose
``train`` part is empty: these sets exist for test-time adaptation. Sample ids are
``cifar10_c/<corruption>/<severity>/<index of the clean test image>``, so the same index
names the same underlying image in every domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.registry import register_dataset, register_domain_set
from fluxbench.errors import ConfigError, DataError

# the 15 benchmark corruptions, then the 4 hold-out ones shipped in the same archives
CIFAR_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_RELEASES = {
    "cifar10_c": ("CIFAR-10-C", 10, "https://zenodo.org/record/2535967 (CIFAR-10-C.tar)", CIFAR10_CLASSES),
    "cifar100_c": ("CIFAR-100-C", 100, "https://zenodo.org/record/3555552 (CIFAR-100-C.tar)", ()),
}


def empty_like(images: np.ndarray, name: str, class_names: tuple[str, ...] = ()) -> ImageDataset:
    """An :class:`ImageDataset` with no rows and the image shape of ``images`` (the train part of TTA sets)."""
    return ImageDataset(
        np.zeros((0, *images.shape[1:]), dtype=np.uint8), np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=str), name, class_names,
    )


def check_domain(corruption: str, severity: int, known: Iterable[str]) -> None:
    """A :class:`ConfigError` unless ``corruption`` is one of ``known`` and ``severity`` is 1..5."""
    known = tuple(known)
    if corruption not in known:
        raise ConfigError(f"unknown corruption {corruption!r}; the release has: {', '.join(known)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ConfigError(f"severity must be an integer 1..5, got {severity!r}")


def _load(path: Path, source: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist; extract it from {source}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npy file ({err}); extract a fresh copy from {source}") from None


def read_cifar_c_domains(
    data_root: str | Path, dataset: str, domains: Iterable[tuple[str, int]], folder: str | None = None
) -> dict[tuple[str, int], ImageDataset]:
    """Many ``(corruption, severity)`` domains of ``cifar10_c`` / ``cifar100_c`` at once, keyed by domain."""
    if dataset not in _RELEASES:
        raise ConfigError(f"unknown CIFAR-C release {dataset!r}; known: {', '.join(_RELEASES)}")
    default_folder, num_classes, source, class_names = _RELEASES[dataset]
    root = Path(data_root).expanduser() / (folder or default_folder)
    if not root.is_dir():
        raise DataError(f"{root} does not exist; expected {root.name}/<corruption>.npy and labels.npy from {source}")
    labels_all = _load(root / "labels.npy", source)
    out: dict[tuple[str, int], ImageDataset] = {}
    for corruption, severity in domains:
        check_domain(corruption, severity, CIFAR_C_CORRUPTIONS)
        path = root / f"{corruption}.npy"
        images = _load(path, source)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) % 5:
            raise DataError(f"{path}: expected uint8 (5 * N, H, W, 3), got {images.dtype} {images.shape}; "
                            f"extract a fresh copy from {source}")
        n = len(images) // 5
        if labels_all.shape != (len(images),) or not np.issubdtype(labels_all.dtype, np.integer):
            raise DataError(f"{root / 'labels.npy'}: expected {len(images)} integer labels like {path.name}, "
                            f"got {labels_all.dtype} {labels_all.shape}")
        rows = slice((severity - 1) * n, severity * n)
        labels = np.asarray(labels_all[rows], dtype=np.int64)
        if n and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{root / 'labels.npy'}: labels outside 0..{num_classes - 1}")
        ids = np.array([f"{dataset}/{corruption}/{severity}/{i}" for i in range(n)])
        out[(corruption, int(severity))] = ImageDataset(
            images[rows], labels, ids, f"{dataset}/{corruption}-{severity}", class_names
        )
    return out


def _split(data_root: Path, dataset: str, corruption: str, severity: int, folder: str | None) -> DataSplit:
    test = read_cifar_c_domains(data_root, dataset, [(corruption, severity)], folder)[(corruption, int(severity))]
    return DataSplit(empty_like(test.images, f"{test.name}/train", test.class_names), test, _RELEASES[dataset][1])


@register_dataset("cifar10_c")
def read_cifar10_c(
    data_root: Path, corruption: str = "gaussian_noise", severity: int = 5, folder: str | None = None
) -> DataSplit:
    """CIFAR-10-C at one corruption and severity: the test part holds the corrupted images, train is empty."""
    return _split(data_root, "cifar10_c", corruption, severity, folder)


@register_dataset("cifar100_c")
def read_cifar100_c(
    data_root: Path, corruption: str = "gaussian_noise", severity: int = 5, folder: str | None = None
) -> DataSplit:
    """CIFAR-100-C at one corruption and severity: the test part holds the corrupted images, train is empty."""
    return _split(data_root, "cifar100_c", corruption, severity, folder)


@register_domain_set("cifar10_c")
def read_cifar10_c_domains(data_root: Path, domains: Iterable[tuple[str, int]], folder: str | None = None
                           ) -> dict[tuple[str, int], ImageDataset]:
    return read_cifar_c_domains(data_root, "cifar10_c", domains, folder)


@register_domain_set("cifar100_c")
def read_cifar100_c_domains(data_root: Path, domains: Iterable[tuple[str, int]], folder: str | None = None
                            ) -> dict[tuple[str, int], ImageDataset]:
    return read_cifar_c_domains(data_root, "cifar100_c", domains, folder)
