"""ImageNet-C, the released folder tree, read as it is on disk.

Layout (Hendrycks & Dietterich, https://zenodo.org/record/2235448: ``noise.tar``,
``blur.tar``, ``weather.tar``, ``digital.tar``; ``extra.tar`` holds the four held-out corruptions,
speckle_noise, gaussian_blur, spatter and saturate, in the same layout)::

    <data_root>/ImageNet-C/<corruption>/<severity 1..5>/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG

The images are already 224x224 (the generator's Resize(256) + CenterCrop(224)), so they
are decoded as they are, once, through :mod:`fluxbench.benchmarks.folder_cache`. Labels
are ImageNet-1k indices (the position of the wnid in timm's sorted list of the 1,000
synsets), whatever subset of class folders is on disk, so they match any ImageNet
classifier's head. ``ids_file`` restricts to a list of ``<wnid>/<file>`` lines in that
order, e.g. RobustBench's 5,000-image ``imagenet_test_image_ids.txt`` (robustbench
``data/`` folder) that TTA papers evaluate on; ``max_per_class`` keeps the first files
of each class for quick runs. Sample ids are ``imagenet_c/<corruption>/<severity>/<wnid>/<file>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.benchmarks.cifar_c import CIFAR_C_CORRUPTIONS, check_domain, empty_like
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import class_folders, dataset_dir, folder_dataset, list_images
from fluxbench.benchmarks.registry import register_dataset, register_domain_set
from fluxbench.errors import DataError

SOURCE = "https://zenodo.org/record/2235448"
# which released tar holds each corruption; the four held-out ones are in extra.tar, same layout
_TARS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k synsets in class-index order (shipped with timm, no download)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def _tar_of(corruption: str) -> str:
    return next((f"{tar}.tar" for tar, names in _TARS.items() if corruption in names), "extra.tar")


def _read_ids(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"ids_file {path} does not exist; give a text file of '<wnid>/<file>' lines")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        wnid, sep, name = line.partition("/")
        if not sep or "/" in name:
            raise DataError(f"{path}:{number}: expected '<wnid>/<file>', got {line!r}")
        pairs.append((wnid, name))
    return pairs


def _labels_of(domain: Path, wnids: Iterable[str]) -> dict[str, int]:
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    unknown = sorted(set(wnids) - set(index))
    if unknown:
        raise DataError(f"{domain}: folders {unknown[:3]} are not ImageNet-1k wnids; expected <wnid>/<image> folders")
    return index


def _files(domain: Path, ids_file: str | None, max_per_class: int | None) -> tuple[list[Path], list[str]]:
    """The image files of one domain folder and their wnids, in the order the options define."""
    if ids_file is not None:
        pairs = _read_ids(Path(ids_file).expanduser())
        files = [domain / wnid / name for wnid, name in pairs]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{len(missing)} images of {ids_file} are missing under {domain}, e.g. {missing[0]}")
        return files, [wnid for wnid, _ in pairs]
    wnids = class_folders(domain)
    if not wnids:
        raise DataError(f"{domain} has no class folders; expected {domain}/<wnid>/<image>.JPEG")
    files, positions = list_images(domain, wnids)
    if max_per_class is not None:
        keep = np.concatenate([np.flatnonzero(positions == p)[:max_per_class] for p in range(len(wnids))])
        files, positions = [files[i] for i in keep], positions[keep]
    return files, [wnids[p] for p in positions]


@register_domain_set("imagenet_c")
def read_imagenet_c_domains(
    data_root: str | Path,
    domains: Iterable[tuple[str, int]],
    folder: str = "ImageNet-C",
    ids_file: str | None = None,
    max_per_class: int | None = None,
) -> dict[tuple[str, int], ImageDataset]:
    """Many ``(corruption, severity)`` domains of ImageNet-C at once, keyed by domain."""
    root = dataset_dir(Path(data_root).expanduser(), folder, f"{folder}/<corruption>/<severity>/<wnid>/<image>", SOURCE)
    rule = ResizeRule(image_size=224, crop_pct=1.0, interpolation="bilinear")  # 224 px files pass unchanged
    out: dict[tuple[str, int], ImageDataset] = {}
    for corruption, severity in domains:
        check_domain(corruption, severity, CIFAR_C_CORRUPTIONS)
        domain = root / corruption / str(severity)
        if not domain.is_dir():
            raise DataError(f"{domain} does not exist; extract {_tar_of(corruption)} from {SOURCE} into {root}")
        files, wnids = _files(domain, ids_file, max_per_class)
        index = _labels_of(domain, set(wnids))
        labels = np.array([index[w] for w in wnids], dtype=np.int64)
        name = f"imagenet_c/{corruption}-{severity}"
        out[(corruption, int(severity))] = folder_dataset(files, labels, root, name, imagenet_wnids(), rule)
    return out


@register_dataset("imagenet_c")
def read_imagenet_c(
    data_root: Path,
    corruption: str = "gaussian_noise",
    severity: int = 5,
    folder: str = "ImageNet-C",
    ids_file: str | None = None,
    max_per_class: int | None = None,
) -> DataSplit:
    """ImageNet-C at one corruption and severity: the test part holds the corrupted images, train is empty."""
    test = read_imagenet_c_domains(data_root, [(corruption, severity)], folder, ids_file, max_per_class)
    test = test[(corruption, int(severity))]
    return DataSplit(empty_like(test.images, f"{test.name}/train", test.class_names), test, len(imagenet_wnids()))
