"""A mini-FiF from ImageFolder datasets already on disk (spec ``fomo_in_flux.md`` section 9, the recipe).

Each source is an ImageFolder tree, ``<folder>/<class>/<image>`` (split 80/20 per class by the
fixed seed of :func:`fluxbench.benchmarks.imagefolder.seeded_split`) or ``<folder>/train/<class>/``
and ``<folder>/test/<class>/`` (used as they are). The builder writes the released layout, so the
same reader and streams read it:

- ``data/<NAME>`` is a symbolic link to the source folder (or a copy, with ``copy_images``), and
  info-JSON keys are image paths relative to it;
- ``data_lib/00_info/<NAME>_classnames.json``, ``<NAME>_{train,test}.json``;
- ``data_lib/00_info/fluxbench_datasets.json``: the rows (PRIMER, role) of these datasets, with
  ``captions: templated``;
- ``stream_construction/<stream>.json`` over the adaptation datasets' classes (``random``: seeded
  shuffle; ``dataset_chunked``: datasets contiguous, in the order given) and
  ``stream_construction/datasets/<NAME>.json``;
- ``manifest.json``: the stream cut into ``num_tasks`` tasks, which says that captions are templated.

Captions are templated: ``default_caption`` is the list of templates filled with the class name
(the PRIMER first), so training draws one template per image and test uses the PRIMER. This reduces
FiF to class-name contrastive training; the paper's captions are far richer, and the manifest says so.

Everything is written into a temporary folder beside ``out_root`` and renamed into place at the end,
so a failure leaves no half-built tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.imagefolder import class_folders, list_images, seeded_split
from fluxbench.errors import ConfigError, DataError
from fluxbench.fomo.datasets_table import EXTRA_ROWS_FILE, FifDataset
from fluxbench.fomo.info import FifReader
from fluxbench.fomo.layout import FifLayout
from fluxbench.fomo.streams import SEPARATOR, build_stream, parse_stream, task_sizes, write_manifest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TEMPLATED_NOTE = ("captions are templated class names (spec section 9, step 2), not the release's "
                  "BLIP + LLM merged captions")
ORDERS = ("random", "dataset_chunked")


@dataclass(frozen=True)
class MiniSource:
    """An ImageFolder dataset to include: ``name`` becomes its folder, info-JSON prefix and stream prefix."""

    name: str
    folder: Path
    role: str = "adapt"
    primer: str = "A photo of a {}."
    templates: tuple[str, ...] = ()  # more caption templates beside the PRIMER, each with one "{}"

    def row(self) -> FifDataset:
        return FifDataset(self.name, self.primer, self.role, captions="templated")


@dataclass(frozen=True)
class MiniFif:
    root: Path
    stream: Path
    manifest: Path


def _files(source: MiniSource) -> dict[str, tuple[list[Path], np.ndarray, Path]]:
    """part -> (files, labels, base folder) and the class folder names, from either ImageFolder form."""
    root = Path(source.folder)
    layout = "<class>/<image> or train/<class>/<image> + test/<class>/<image>"
    if not root.is_dir():
        raise DataError(f"ImageFolder {root} for {source.name} does not exist; expected {layout}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = class_folders(root / "train")
        if not classes or set(classes) - set(class_folders(root / "test")):
            raise DataError(f"{root}: train/ and test/ must hold the same class folders ({layout})")
        parts = {p: list_images(root / p, classes) for p in ("train", "test")}
        return {p: (files, labels, root) for p, (files, labels) in parts.items()}, classes
    classes = class_folders(root)
    if not classes:
        raise DataError(f"ImageFolder {root} for {source.name} has no class folders; expected {layout}")
    files, labels = list_images(root, classes)
    train, test = seeded_split(labels, classes)
    return {"train": ([files[i] for i in train], labels[train], root),
            "test": ([files[i] for i in test], labels[test], root)}, classes


def _records(source: MiniSource, files: list[Path], labels: np.ndarray, base: Path, names: list[str]) -> dict:
    captions = [source.primer, *source.templates]
    return {
        f.relative_to(base).as_posix(): {
            "classname": names[int(t)], "target": int(t),
            "default_caption": [c.format(names[int(t)]) for c in captions],
            "primer_caption": source.primer.format(names[int(t)]),
            "synthetic_caption": None, "synthetic_merged_caption": None,
        }
        for f, t in zip(files, labels)
    }


def _check(sources: Sequence[MiniSource], order: str) -> None:
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    names = [s.name for s in sources]
    bad = [n for n in names if not _NAME.match(n) or SEPARATOR in n]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"mini-FiF dataset names must be distinct folder names (letters, digits, _ and -); "
                          f"got {names}")
    if not any(s.role == "adapt" for s in sources):
        raise ConfigError("a mini-FiF needs at least one adaptation dataset (role='adapt') to stream")
    for source in sources:
        source.row()  # PRIMER and role are checked by the table row
        if any(t.count("{}") != 1 for t in source.templates):
            raise ConfigError(f"{source.name}: every caption template needs one '{{}}', got {source.templates}")


def _write_dataset(tmp: Path, source: MiniSource, copy_images: bool) -> list[str]:
    """Info JSONs and the image link of one source; returns its class names."""
    parts, folders = _files(source)
    names = [c.replace("_", " ") for c in folders]
    if len(set(names)) != len(names):
        raise DataError(f"{source.folder}: class folders {folders} collide once '_' is read as a space")
    info = tmp / "data_lib" / "00_info"
    (info / f"{source.name}_classnames.json").write_text(json.dumps(names, indent=1))
    for part, (files, labels, base) in parts.items():
        records = _records(source, files, labels, base, names)
        (info / f"{source.name}_{part}.json").write_text(json.dumps(records, indent=1))
    target = tmp / "data" / source.name
    if copy_images:
        shutil.copytree(Path(source.folder), target)
    else:
        target.symlink_to(Path(source.folder).resolve(), target_is_directory=True)
    return names


def build_mini_fif(
    sources: Sequence[MiniSource], out_root: str | Path, num_tasks: int = 4, seed: int = 0, order: str = "random",
    copy_images: bool = False,
) -> MiniFif:
    """Write a mini-FiF tree at ``out_root`` (which must not exist or be empty) and its stream and manifest."""
    _check(sources, order)
    out_root = Path(out_root)
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise ConfigError(f"{out_root} already exists and is not empty; give a new folder for the mini-FiF")
    tmp = out_root.with_name(f".{out_root.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for sub in ("data", "data_lib/00_info", "stream_construction/datasets"):
            (tmp / sub).mkdir(parents=True)
        entries: list[str] = []
        for source in sources:
            names = _write_dataset(tmp, source, copy_images)
            keys = [f"{source.name}{SEPARATOR}{n}" for n in names]
            (tmp / "stream_construction" / "datasets" / f"{source.name}.json").write_text(json.dumps(keys, indent=1))
            if source.role == "adapt":
                entries.extend(keys)
        task_sizes(len(entries), num_tasks)  # T larger than the number of classes fails here, before the rename
        rows = [{"name": s.name, "primer": s.primer, "role": s.role, "captions": "templated"} for s in sources]
        (tmp / "data_lib" / "00_info" / EXTRA_ROWS_FILE).write_text(json.dumps(rows, indent=1))
        if order == "random":
            entries = [entries[i] for i in np.random.RandomState(seed).permutation(len(entries))]
        stream_name = f"mini_{order}_{seed}.json"
        (tmp / "stream_construction" / stream_name).write_text(json.dumps(entries, indent=1))
        reader = FifReader(FifLayout.from_root(tmp))
        stream = build_stream(reader, parse_stream(entries, stream_name), num_tasks, source=stream_name,
                              ordering=order, reverse=False, seed=seed, caption_note=TEMPLATED_NOTE)
        write_manifest(stream, tmp / "manifest.json")
        if out_root.exists():
            out_root.rmdir()
        os.replace(tmp, out_root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return MiniFif(out_root, out_root / "stream_construction" / stream_name, out_root / "manifest.json")
