"""ImageNet-100: a 100-class subset of ILSVRC-2012, read from ``train/`` and ``val/`` class folders.

Layout::

    <data_root>/<folder>/train/<wnid>/*.JPEG
    <data_root>/<folder>/val/<wnid>/*.JPEG

``folder`` defaults to ``imagenet100`` (an extracted subset). ``class_list`` names a text
file with one wnid per line (the first token of each line; e.g. the ``imagenet100.txt``
list of CMC/PODNet), resolved against the dataset folder when relative; with it,
``folder`` may also point at a full ImageNet tree. Without it every class folder under
``train/`` is used. ``subset`` names a list published with fluxbench instead
(``imagenet100_ucir`` or ``imagenet100_eval``, :mod:`.imagenet_subsets`), read from a full
ImageNet tree. Class ids follow the sorted wnids, as ``ImageFolder`` on the extracted
subset gives (PyCIL's ``iImageNet100``).
"""

from __future__ import annotations

from pathlib import Path

from fluxbench.benchmarks.base import DataSplit
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import class_folders, dataset_dir, folder_dataset, list_images
from fluxbench.benchmarks.imagenet_subsets import CLASS_LISTS
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import ConfigError, DataError

SOURCE = "https://image-net.org (ILSVRC-2012), with a 100-class list such as CMC's imagenet100.txt"


def read_class_list(path: Path, available: list[str]) -> list[str]:
    """Wnids from ``path`` (first token per non-empty line); each must be a folder in ``available``."""
    if not path.is_file():
        raise DataError(f"class list {path} does not exist; give a text file with one wnid per line")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read class list {path}: {err}") from None
    wnids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not wnids:
        raise DataError(f"class list {path} is empty; give one wnid per line")
    repeated = sorted({w for w in wnids if wnids.count(w) > 1})
    if repeated:
        raise DataError(f"class list {path} repeats {repeated[:5]}")
    unknown = sorted(set(wnids) - set(available))
    if unknown:
        raise DataError(f"class list {path} names {len(unknown)} classes that are not in the data: {unknown[:5]}")
    return sorted(wnids)


def packaged_list(subset: str) -> Path:
    """A class list published in ``fluxbench/benchmarks/class_lists/``, by its name without ``.txt``."""
    known = sorted(p.stem for p in CLASS_LISTS.glob("imagenet100_*.txt"))
    if subset not in known:
        raise ConfigError(f"imagenet100: subset must be one of {known}, got {subset!r}")
    return CLASS_LISTS / f"{subset}.txt"


@register_dataset("imagenet100")
def read_imagenet100(
    data_root: Path, folder: str = "imagenet100", class_list: str | None = None, image_size: int = 224,
    crop_pct: float = 0.875, interpolation: str = "bicubic", subset: str | None = None,
) -> DataSplit:
    """ImageNet-100 train/val as a :class:`DataSplit` (val is the test part)."""
    rule = ResizeRule(image_size, crop_pct, interpolation)
    if subset is not None and class_list is not None:
        raise ConfigError("imagenet100: give class_list or subset, not both")
    root = dataset_dir(data_root, folder, f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG", SOURCE)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataError(f"{root / part} does not exist; expected {folder}/{part}/<wnid>/*.JPEG ({SOURCE})")
    available = class_folders(root / "train")
    if subset is not None:
        classes = read_class_list(packaged_list(subset), available)
    else:
        classes = read_class_list(root / Path(class_list).expanduser(), available) if class_list else available
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders; expected {folder}/train/<wnid>/*.JPEG")
    missing = sorted(set(classes) - set(class_folders(root / "val")))
    if missing:
        raise DataError(f"{root / 'val'} lacks class folders {missing[:5]}; val must be sorted into <wnid>/ folders")
    train_files, train_labels = list_images(root / "train", classes)
    test_files, test_labels = list_images(root / "val", classes)
    return DataSplit(
        folder_dataset(train_files, train_labels, root, "imagenet100/train", classes, rule),
        folder_dataset(test_files, test_labels, root, "imagenet100/test", classes, rule),
        len(classes),
    )
