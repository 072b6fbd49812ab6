"""TinyImageNet (200 ImageNet classes at 64x64), read from the released ``tiny-imagenet-200`` archive.

Layout (http://cs231n.stanford.edu/tiny-imagenet-200.zip, extracted)::

    <data_root>/<folder>/wnids.txt                      # the 200 wnids
    <data_root>/<folder>/words.txt                      # "<wnid>\\t<name>, <synonym>, ..." (all of WordNet)
    <data_root>/<folder>/train/<wnid>/images/*.JPEG     # 500 per class
    <data_root>/<folder>/val/images/*.JPEG              # 50 per class ...
    <data_root>/<folder>/val/val_annotations.txt        # ... labelled here: "<file>\\t<wnid>\\t<box>"

The official test set has no labels, so val is the test part, as upstream IBCL does (``ibcl-anon/ibcl``
``utils/dataloader_utils.py``). Class ids follow the sorted wnids: upstream indexes ``os.listdir(train/)``, which
depends on the file system, but its comments name the wnid of every index it uses (0 = n01443537 goldfish,
195 = n09246464 cliff), and those are the sorted positions. Upstream trains on the first 450 images of a class
and validates on the other 50; ``train_per_class`` keeps the first 450 of the sorted files. The words of a class
(each comma-separated synonym) are aliases for it in ``benchmark.class_pairs``, except where two classes share one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluxbench.benchmarks.base import DataSplit
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import IMAGE_EXTENSIONS, dataset_dir, folder_dataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import ConfigError, DataError

SOURCE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
LAYOUT = "wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"


def _read(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected TinyImageNet's {LAYOUT} (published at {SOURCE})")
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def class_aliases(words: list[str], wnids: list[str]) -> dict[str, int]:
    """Lower-cased names and synonyms of each class -> its id; a name two classes share maps to neither."""
    position = {w: i for i, w in enumerate(wnids)}
    aliases: dict[str, int] = {}
    for line in words:
        wnid, _, text = line.partition("\t")
        if wnid.strip() not in position:
            continue
        label = position[wnid.strip()]
        for name in {text.strip().lower(), *(n.strip().lower() for n in text.split(","))} - {""}:
            if aliases.setdefault(name, label) != label:
                aliases[name] = -1
    return aliases


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; expected TinyImageNet's {LAYOUT} (published at {SOURCE})")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise DataError(f"{folder} has no images")
    return found


def _val(root: Path, position: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    """Validation files and labels from ``val_annotations.txt`` (sorted by file name)."""
    rows = []
    for number, line in enumerate(_read(root / "val" / "val_annotations.txt"), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in position:
            raise DataError(f"{root / 'val' / 'val_annotations.txt'} line {number}: expected '<file>\\t<wnid>...' "
                            "with a wnid of wnids.txt")
        rows.append((fields[0].strip(), position[fields[1].strip()]))
    rows.sort()
    files = [root / "val" / "images" / name for name, _ in rows]
    return files, np.asarray([label for _, label in rows], dtype=np.int64)


@register_dataset("tiny_imagenet")
def read_tiny_imagenet(
    data_root: Path, folder: str = "tiny-imagenet-200", train_per_class: int | None = 450, image_size: int = 64,
    crop_pct: float = 1.0, interpolation: str = "bicubic",
) -> DataSplit:
    """TinyImageNet train (the first ``train_per_class`` of each class) and val as the test part."""
    if train_per_class is not None and int(train_per_class) < 1:
        raise ConfigError(f"tiny_imagenet: train_per_class must be >= 1 or null, got {train_per_class!r}")
    rule = ResizeRule(image_size, crop_pct, interpolation)
    root = dataset_dir(data_root, folder, f"{folder}/ with {LAYOUT}", SOURCE)
    wnids = sorted({line.split()[0] for line in _read(root / "wnids.txt")})
    position = {w: i for i, w in enumerate(wnids)}
    aliases = class_aliases(_read(root / "words.txt"), wnids)
    train_files: list[Path] = []
    train_labels: list[int] = []
    for label, wnid in enumerate(wnids):
        files = _images(root / "train" / wnid / "images")[:train_per_class]
        train_files.extend(files)
        train_labels.extend([label] * len(files))
    test_files, test_labels = _val(root, position)
    return DataSplit(
        folder_dataset(train_files, np.asarray(train_labels), root, "tiny_imagenet/train", wnids, rule),
        folder_dataset(test_files, test_labels, root, "tiny_imagenet/test", wnids, rule),
        len(wnids), class_aliases={k: v for k, v in aliases.items() if v >= 0},
    )
