"""Reading the released info JSONs and their images (spec ``fomo_in_flux.md`` section 9).

``<NAME>_<split>.json`` maps each image path (relative to ``data/<NAME>/``) to a record with
``classname``, ``target``, ``default_caption``, ``primer_caption``, ``synthetic_caption`` and
``synthetic_merged_caption``. The release is not uniform, so records are normalised here once:
``synthetic_merged_caption`` is a list in most files and a plain string in some (AI2DIAGRAMS);
``default_caption`` is a string (FSCOCO) or a list of five (MSCOCO, Flickr30k); retrieval-only
sets have ``classname: null`` and ``target`` = the image's index, and no classnames JSON.

Where a resized copy exists (``<NAME>_<split>_224.json`` and the ``<NAME>_<split>_224/`` folder),
its files are read instead, as the release does with ``create_resized_variant_if_possible``. Sample
ids are always ``<NAME>/<original path>``, so a manifest replays on a tree with or without the copies.
Images are decoded once through :mod:`fluxbench.benchmarks.folder_cache`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule, decode_images
from fluxbench.errors import DataError
from fluxbench.fomo.datasets_table import DatasetTable, FifDataset, read_extra_rows
from fluxbench.fomo.layout import RESIZED, FifLayout

RECORD_KEYS = ("classname", "target", "default_caption", "synthetic_merged_caption")


@dataclass(frozen=True)
class InfoRecord:
    """One image: ``path`` as keyed in the plain info JSON, ``file`` where it is read from (under ``data/<NAME>/``)."""

    path: str
    file: str
    classname: str | None
    target: int
    default_caption: tuple[str, ...]  # () when null; one element for a plain string
    primer_caption: str | None
    synthetic_merged_caption: tuple[str, ...]


@dataclass(frozen=True)
class InfoSplit:
    """One dataset's train or test records and class names, as on disk."""

    dataset: FifDataset
    part: str  # "train" or "test"
    folder: Path
    info_file: Path
    records: tuple[InfoRecord, ...]
    classnames: tuple[str, ...]
    resized: bool

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> np.ndarray:
        return np.array([f"{self.dataset.name}/{r.path}" for r in self.records])

    @property
    def targets(self) -> np.ndarray:
        return np.array([r.target for r in self.records], dtype=np.int64)

    def files(self) -> list[Path]:
        return [self.folder / r.file for r in self.records]

    def image_text_pairs(self) -> list[tuple[str, tuple[str, ...]]]:
        """Retrieval view: (sample id, its reference captions) per image."""
        return [(f"{self.dataset.name}/{r.path}", r.default_caption) for r in self.records]


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataError(f"{where}: captions must be a string, a list of strings or null, got {value!r:.80}")


def load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None


def _record(path: str, file: str, raw: Any, info_file: Path, num_classes: int) -> InfoRecord:
    where = f"{info_file.name} entry {path!r}"
    if not isinstance(raw, dict) or any(k not in raw for k in RECORD_KEYS):
        raise DataError(f"{where} must be an object with keys {', '.join(RECORD_KEYS)}")
    target = raw["target"]
    if not isinstance(target, int) or target < 0 or (num_classes and target >= num_classes):
        raise DataError(f"{where}: target {target!r} is not a class index 0..{max(num_classes - 1, 0)}")
    classname = raw["classname"]
    if classname is not None and not isinstance(classname, str):
        raise DataError(f"{where}: classname must be a string or null, got {classname!r}")
    return InfoRecord(
        path=path, file=file, classname=classname, target=target,
        default_caption=_texts(raw["default_caption"], where), primer_caption=raw.get("primer_caption"),
        synthetic_merged_caption=_texts(raw["synthetic_merged_caption"], where),
    )


class FifReader:
    """Info JSONs and images of one FoMo-in-Flux tree; each split is parsed once and decoded once."""

    def __init__(self, layout: FifLayout, rule: ResizeRule | None = None, prefer_resized: bool = True) -> None:
        self.layout = layout
        self.rule = rule or ResizeRule(224, 1.0)  # FiF tests with Resize(224) + CenterCrop(224)
        self.prefer_resized = prefer_resized
        self.table = DatasetTable(read_extra_rows(layout.info_dir))
        self._splits: dict[tuple[str, str], InfoSplit] = {}
        self._images: dict[tuple[str, str], ImageDataset] = {}

    @classmethod
    def from_root(cls, root: str | Path, **options: Any) -> FifReader:
        return cls(FifLayout.from_root(root), **options)

    def classnames(self, name: str) -> tuple[str, ...]:
        """The classnames JSON (index = target); ``()`` for retrieval sets released without one."""
        row = self.table[name]
        path = self.layout.classnames_file(row.name)
        if not path.is_file() and row.kind == "retrieval":
            return ()
        names = load_json(path, f"classnames file of {row.name}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path} must hold a list of class names")
        return tuple(names)

    def split(self, name: str, part: str) -> InfoSplit:
        """``part`` is ``train`` or ``test``; records are checked against the class list and the disk."""
        row = self.table[name]
        key = (row.name, part)
        if key not in self._splits:
            self._splits[key] = self._read_split(row, part)
        return self._splits[key]

    def _read_split(self, row: FifDataset, part: str) -> InfoSplit:
        folder = self.layout.dataset_dir(row.name)
        split = row.split_name(part)
        classnames = self.classnames(row.name)
        plain = self.layout.info_file(row.name, split)
        resized_file = self.layout.info_file(row.name, split, resized=True)
        resized = self.prefer_resized and resized_file.is_file() and self.layout.resized_dir(row.name, split).is_dir()
        info_file = resized_file if resized else plain
        entries = load_json(info_file, f"info file of {row.name} ({split})")
        if not isinstance(entries, dict) or not entries:
            raise DataError(f"{info_file} must map image paths to records and list at least one image")
        prefix = f"{row.name}_{split}_{RESIZED}/"
        records = tuple(
            _record(key[len(prefix):] if resized and key.startswith(prefix) else key, key, raw, info_file,
                    len(classnames))
            for key, raw in entries.items()
        )
        missing = [r.file for r in records if not (folder / r.file).is_file()]
        if missing:
            raise DataError(f"{info_file.name} lists {len(missing)} image(s) missing under {folder}, "
                            f"first: {missing[0]}")
        return InfoSplit(row, part, folder, info_file, records, classnames, resized)

    def images(self, name: str, part: str) -> ImageDataset:
        """All images of a split, labels = the dataset's own targets, ids = ``<NAME>/<path>``."""
        split = self.split(name, part)
        key = (split.dataset.name, part)
        if key not in self._images:
            decoded = decode_images(split.files(), self.rule, name=f"fif-{split.dataset.name}-{part}")
            self._images[key] = ImageDataset(decoded.images, split.targets, split.ids,
                                             f"{split.dataset.name}/{part}", split.classnames)
        return self._images[key]
