"""CelebA (aligned and cropped faces, 40 binary attributes), read from its released files.

Layout (as the authors publish it, and as torchvision's ``CelebA`` reads it)::

    <data_root>/<folder>/img_align_celeba/000001.jpg ...
    <data_root>/<folder>/list_attr_celeba.txt        # count, the 40 attribute names, then "<file> 1 -1 ..." rows
    <data_root>/<folder>/list_eval_partition.txt     # "<file> 0|1|2": train | valid | test

IBCL (arXiv 2305.14782, upstream ``ibcl-anon/ibcl`` ``utils/dataloader_utils.py``) trains on the official train
partition, validates on valid and tests on test; task ``i`` is attribute column ``i``. The reader returns an
:class:`~fluxbench.benchmarks.attributes.AttributeSplit` over the ``attributes`` asked for (in that order), with
``test_split`` (``test`` or ``valid``) as its test part. Images go through the folder cache: the shorter side
resized to ``image_size / crop_pct`` and centre-cropped (upstream feeds the 178x218 originals to ResNet-18; a
cache of originals would be about 19 GB for the training partition alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.attributes import AttributeSplit
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.imagefolder import dataset_dir, folder_dataset
from fluxbench.benchmarks.registry import register_dataset
from fluxbench.errors import ConfigError, DataError

SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped images and the Anno/Eval lists)"
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
LAYOUT = "img_align_celeba/*.jpg, list_attr_celeba.txt and list_eval_partition.txt"


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected CelebA's {path.name} (published at {SOURCE})")
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def read_attributes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """``list_attr_celeba.txt``: the attribute names and, per file, its 0/1 attribute row."""
    lines = _lines(path)
    if len(lines) < 2:
        raise DataError(f"{path} is truncated: expected a count, the attribute names, then one row per image")
    names = lines[1].split()
    rows = {}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise DataError(f"{path} line {number}: expected a file name and {len(names)} values of 1 or -1")
        rows[fields[0]] = (np.asarray(fields[1:], dtype=np.int8) > 0).astype(np.int8)
    return names, rows


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt``: file name -> 0 (train), 1 (valid) or 2 (test)."""
    parts = {}
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path} line {number}: expected '<file> 0|1|2'")
        parts[fields[0]] = int(fields[1])
    return parts


def _part(root: Path, files: list[str], attrs: dict[str, np.ndarray], columns: list[int], name: str,
          class_names: Sequence[str], rule: ResizeRule):
    paths = [root / "img_align_celeba" / f for f in files]
    matrix = np.stack([attrs[f][columns] for f in files])
    data = folder_dataset(paths, matrix[:, 0].astype(np.int64), root, name, class_names, rule)
    return data, matrix


@register_dataset("celeba")
def read_celeba(
    data_root: Path, folder: str = "celeba", attributes: Sequence[str] | None = None, test_split: str = "test",
    image_size: int = 64, crop_pct: float = 1.0, interpolation: str = "bicubic",
) -> AttributeSplit:
    """The official train partition and the ``test_split`` partition, one binary task per attribute."""
    if test_split not in ("test", "valid"):
        raise ConfigError(f"celeba: test_split must be 'test' or 'valid', got {test_split!r}")
    rule = ResizeRule(image_size, crop_pct, interpolation)
    root = dataset_dir(data_root, folder, f"{folder}/{LAYOUT}", SOURCE)
    if not (root / "img_align_celeba").is_dir():
        raise DataError(f"{root / 'img_align_celeba'} does not exist; expected {folder}/{LAYOUT} (published at "
                        f"{SOURCE})")
    names, attrs = read_attributes(root / "list_attr_celeba.txt")
    partition = read_partition(root / "list_eval_partition.txt")
    wanted = list(attributes) if attributes is not None else names
    unknown = [a for a in wanted if a not in names]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise ConfigError(f"celeba: attributes must be distinct names of list_attr_celeba.txt; unknown {unknown[:5]}"
                          f" (known: {', '.join(names[:5])}, ...)")
    columns = [names.index(a) for a in wanted]
    unlabelled = sorted(set(partition) - set(attrs))
    if unlabelled:
        raise DataError(f"{root / 'list_attr_celeba.txt'} has no row for {len(unlabelled)} partitioned files, "
                        f"e.g. {unlabelled[0]}")
    class_names = tuple(n for a in wanted for n in (f"not {a}", a))
    parts = {}
    for role, key in (("train", "train"), ("test", test_split)):
        files = sorted(f for f, p in partition.items() if p == PARTITIONS[key])
        if not files:
            raise DataError(f"{root / 'list_eval_partition.txt'} lists no '{key}' images")
        parts[role] = _part(root, files, attrs, columns, f"celeba/{role}", class_names, rule)
    (train, train_attrs), (test, test_attrs) = parts["train"], parts["test"]
    return AttributeSplit(train, test, 2 * len(wanted), train_attributes=train_attrs, test_attributes=test_attrs,
                          attribute_names=tuple(wanted))
