"""FoMo-in-Flux streams: ``NAME+++class`` lists cut into tasks (spec ``fomo_in_flux.md`` section 3).

A stream is a JSON list of ``"DATASETNAME+++classname"`` strings; it fixes the order in which
classes (concepts) arrive. Every released ordering in ``stream_construction/`` is such a list
(:func:`ordering_of` names which one a file is), and so are the per-dataset lists in
``stream_construction/datasets/`` that the release concatenates when a config names datasets
instead of a stream (:func:`stream_from_datasets`).

Tasks, as ``utils/sequence_handling.py`` cuts them:

- T tasks by equal class count: floor(N/T) classes each, the first N mod T tasks one more;
- or ``dataset_incremental``: one task per dataset, in order of first appearance. The release
  starts a new task only when an unseen dataset appears, so a dataset's later entries join
  whatever task is open; here a dataset's classes all go to its own task (the same for the
  dataset-chunked streams, which are the ones this option is meant for).

A task's data is every training image of its classes. :func:`write_manifest` writes the classes
and sample ids per task (the schema of :mod:`fluxbench.streams.manifest`); :func:`stream_from_manifest`
replays exactly those tasks.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.fomo.captions import training_caption
from fluxbench.fomo.info import FifReader, InfoRecord, load_json
from fluxbench.fomo.layout import SOURCE
from fluxbench.streams.experience import Experience
from fluxbench.streams.manifest import read_manifest

SEPARATOR = "+++"
BENCHMARK = "fomo_in_flux"

# file stem -> ordering kind; `_reverse` anywhere in the stem flips it (spec section 3's table)
_ORDERINGS = (
    (re.compile(r"^random_sequence(_reverse)?_\d+(_short|_fast)?$"), "random"),
    (re.compile(r"^frequency_sequence(_reverse)?_\d+$"), "frequency"),
    (re.compile(r"^performance_sequence(_reverse)?_\d+$"), "performance"),
    (re.compile(r"^similarity_sequence(_reverse)?_\d+$"), "similarity"),
    (re.compile(r"^time_incremental_dschunked(_reverse)?_\d+$"), "time_dataset_chunked"),
    (re.compile(r"^time_incremental_rsagg(_reverse)?_\d+$"), "time_bucket_shuffled"),
    (re.compile(r"^debug_seq(uence|_small)$"), "debug"),
)


@dataclass(frozen=True)
class StreamEntry:
    dataset: str
    classname: str

    @property
    def key(self) -> str:
        return f"{self.dataset}{SEPARATOR}{self.classname}"

    @classmethod
    def parse(cls, text: Any, where: str) -> StreamEntry:
        if not isinstance(text, str) or text.count(SEPARATOR) != 1:
            raise DataError(f"{where} is {text!r:.80}, not a 'DATASETNAME+++classname' string")
        dataset, classname = text.split(SEPARATOR)
        if not dataset or not classname:
            raise DataError(f"{where} is {text!r:.80}: dataset or class name is empty")
        return cls(dataset, classname)


@dataclass(frozen=True)
class Ordering:
    kind: str  # random | frequency | performance | similarity | time_* | debug | per_dataset | custom
    reverse: bool
    name: str


def ordering_of(path: str | Path) -> Ordering:
    """Which released ordering a stream file is, from its name (``custom`` for any other file)."""
    path = Path(path)
    stem = path.stem
    if path.parent.name == "datasets":
        return Ordering("per_dataset", False, stem)
    for pattern, kind in _ORDERINGS:
        if pattern.match(stem):
            return Ordering(kind, "_reverse" in stem, stem)
    return Ordering("custom", False, stem)


def parse_stream(items: Any, where: str) -> list[StreamEntry]:
    if not isinstance(items, list) or not items:
        raise DataError(f"{where} must be a non-empty JSON list of 'DATASETNAME+++classname' strings")
    entries = [StreamEntry.parse(item, f"{where} entry {i}") for i, item in enumerate(items)]
    seen: set[str] = set()
    duplicates = [e.key for e in entries if e.key in seen or seen.add(e.key)]
    if duplicates:
        raise DataError(f"{where} lists {len(duplicates)} class(es) twice, first: {duplicates[0]!r}")
    return entries


def read_stream(path: str | Path) -> list[StreamEntry]:
    """A stream file: its entries in order; malformed JSON, entries or duplicates are a :class:`DataError`."""
    path = Path(path)
    return parse_stream(load_json(path, "stream file"), f"stream {path.name}")


def stream_from_datasets(stream_dir: str | Path, names: Sequence[str]) -> list[StreamEntry]:
    """The release's ``dataset.name`` path: ``stream_construction/datasets/<handle>.json`` concatenated."""
    items: list[Any] = []
    for name in names:
        items.extend(load_json(Path(stream_dir) / "datasets" / f"{name}.json", f"stream of dataset {name}"))
    return parse_stream(items, f"datasets stream {'+'.join(names)}")


def reshuffle(entries: Sequence[StreamEntry], seed: int) -> list[StreamEntry]:
    """``sequence_reshuffle``: the same permutation as the release's ``np.random.seed(s); np.random.shuffle``."""
    out = list(entries)
    np.random.RandomState(seed).shuffle(out)
    return out


def task_sizes(num_classes: int, num_tasks: int) -> list[int]:
    """floor(N/T) classes per task, the first N mod T tasks one more."""
    if num_tasks <= 0:
        raise ConfigError(f"the number of tasks must be positive, got {num_tasks}")
    if num_tasks > num_classes:
        raise ConfigError(f"{num_tasks} tasks need at least {num_tasks} classes; the stream has {num_classes}")
    base, extra = divmod(num_classes, num_tasks)
    return [base + 1 if i < extra else base for i in range(num_tasks)]


def chunk(entries: Sequence[StreamEntry], num_tasks: int) -> list[list[StreamEntry]]:
    bounds = np.cumsum([0, *task_sizes(len(entries), num_tasks)])
    return [list(entries[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def by_dataset(entries: Iterable[StreamEntry]) -> list[list[StreamEntry]]:
    """One task per dataset, datasets in order of first appearance, classes in stream order."""
    groups: dict[str, list[StreamEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.dataset, []).append(entry)
    return list(groups.values())


@dataclass(frozen=True)
class FifTask:
    index: int
    classes: tuple[str, ...]  # "NAME+++class", in stream order
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.split(SEPARATOR)[0] for c in self.classes))


@dataclass(frozen=True)
class FifStream:
    tasks: tuple[FifTask, ...]
    about: dict[str, Any] = field(default_factory=dict)  # source, ordering, num_tasks, captions, ...

    @property
    def class_order(self) -> list[str]:
        return [c for task in self.tasks for c in task.classes]


def missing_on_disk(reader: FifReader, entries: Sequence[StreamEntry]) -> tuple[list[str], list[str]]:
    """Datasets of ``entries`` that are not on disk, and classes missing from present datasets' class lists."""
    absent: dict[str, None] = {}
    classes: dict[str, set[str]] = {}
    missing_classes = []
    for entry in entries:
        if entry.dataset in absent:
            continue
        if entry.dataset not in classes:
            if not _present(reader, entry.dataset):
                absent[entry.dataset] = None
                continue
            classes[entry.dataset] = set(reader.classnames(entry.dataset))  # a malformed file still fails loudly
        if entry.classname not in classes[entry.dataset]:
            missing_classes.append(entry.key)
    return list(absent), missing_classes


def _present(reader: FifReader, dataset: str) -> bool:
    """A table row, an image folder and a class list (retrieval sets may lack the list)."""
    if dataset not in reader.table:
        return False
    row = reader.table[dataset]
    listed = reader.layout.classnames_file(row.name).is_file() or row.kind == "retrieval"
    return (reader.layout.image_root / row.name).is_dir() and listed


def check_on_disk(reader: FifReader, entries: Sequence[StreamEntry], where: str) -> None:
    datasets, classes = missing_on_disk(reader, entries)
    if not datasets and not classes:
        return
    gone = sum(1 for e in entries if e.dataset in set(datasets)) + len(classes)
    parts = []
    if datasets:
        parts.append(f"{len(datasets)} dataset(s) missing ({', '.join(datasets[:5])}; each needs "
                     f"data/<NAME>/ and data_lib/00_info/<NAME>_classnames.json)")
    if classes:
        parts.append(f"{len(classes)} class(es) not in their dataset's classnames JSON (first: {classes[0]!r})")
    raise DataError(f"{where}: {gone} of {len(entries)} entries are not on disk: {'; '.join(parts)}; "
                    f"FoMo-in-Flux is published at {SOURCE}")


def _class_ids(reader: FifReader, dataset: str, part: str) -> dict[str, list[str]]:
    split = reader.split(dataset, part)
    out: dict[str, list[str]] = {}
    for sample_id, record in zip(split.ids, split.records):
        name = split.classnames[record.target] if split.classnames else record.classname
        out.setdefault(str(name), []).append(str(sample_id))
    return out


def build_stream(
    reader: FifReader, entries: Sequence[StreamEntry], num_tasks: int = 20, dataset_incremental: bool = False,
    **about: Any,
) -> FifStream:
    """Tasks of ``entries`` with every train (and test) image of their classes, from the files under ``reader``."""
    where = f"stream {about.get('source', '')}".strip()
    entries = [StreamEntry(reader.table[e.dataset].name if e.dataset in reader.table else e.dataset, e.classname)
               for e in entries]
    if not dataset_incremental:
        task_sizes(len(entries), num_tasks)  # T > N fails before any file is read
    check_on_disk(reader, entries, where)
    groups = by_dataset(entries) if dataset_incremental else chunk(entries, num_tasks)
    ids: dict[tuple[str, str], dict[str, list[str]]] = {}

    def members(entry: StreamEntry, part: str) -> list[str]:
        key = (entry.dataset, part)
        if key not in ids:
            ids[key] = _class_ids(reader, entry.dataset, part)
        return ids[key].get(entry.classname, [])

    tasks = []
    for index, group in enumerate(groups):
        train = [i for e in group for i in members(e, "train")]
        if not train:
            raise DataError(f"{where}: task {index} ({group[0].key}, ...) has no training images")
        tasks.append(FifTask(index, tuple(e.key for e in group), tuple(train),
                             tuple(i for e in group for i in members(e, "test"))))
    captions = sorted({reader.table[d].captions for d in {e.dataset for e in entries}})
    info = {"benchmark": BENCHMARK, "num_tasks": len(tasks), "dataset_incremental": dataset_incremental,
            "captions": "+".join(captions), **about}
    return FifStream(tuple(tasks), info)


def stream_from_file(
    reader: FifReader, stream: str | Path, num_tasks: int = 20, dataset_incremental: bool = False,
    reshuffle_seed: int | None = None,
) -> FifStream:
    """A released (or the user's) stream file by path or name, checked against the disk and cut into tasks."""
    path = reader.layout.stream_file(stream)
    entries = read_stream(path)
    if reshuffle_seed is not None:
        entries = reshuffle(entries, reshuffle_seed)
    ordering = ordering_of(path)
    return build_stream(reader, entries, num_tasks, dataset_incremental, source=path.name,
                        ordering=ordering.kind, reverse=ordering.reverse, reshuffle_seed=reshuffle_seed)


def fif_manifest(stream: FifStream) -> dict[str, Any]:
    """The stream written down: what it was built from, class order, classes and sample ids per task."""
    return {
        **stream.about,
        "class_order": stream.class_order,
        "experiences": [
            {"index": t.index, "classes": list(t.classes), "metadata": {"datasets": list(t.datasets)},
             "train_ids": list(t.train_ids), "test_ids": list(t.test_ids)}
            for t in stream.tasks
        ],
    }


def write_manifest(stream: FifStream, path: str | Path) -> Path:
    """Write the manifest under a temporary name and rename it into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(fif_manifest(stream)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def stream_from_manifest(reader: FifReader, path: str | Path) -> FifStream:
    """Exactly the tasks of a manifest; a sample id no longer on disk is a :class:`DataError`."""
    manifest = read_manifest(path)
    if manifest.get("benchmark") != BENCHMARK:
        raise DataError(f"stream manifest {path} is not a FoMo-in-Flux manifest "
                        f"(benchmark={manifest.get('benchmark')!r})")
    tasks = tuple(
        FifTask(int(e["index"]), tuple(e["classes"]), tuple(e["train_ids"]), tuple(e["test_ids"]))
        for e in manifest["experiences"]
    )
    entries = [StreamEntry.parse(c, f"manifest {Path(path).name} class") for t in tasks for c in t.classes]
    check_on_disk(reader, entries, f"manifest {Path(path).name}")
    _locate(reader, [i for t in tasks for i in (*t.train_ids, *t.test_ids)], f"manifest {Path(path).name}")
    about = {k: v for k, v in manifest.items() if k not in ("class_order", "experiences")}
    return FifStream(tasks, about)


def _locate(reader: FifReader, ids: Sequence[str], where: str) -> None:
    known: set[str] = set()
    for dataset in dict.fromkeys(i.split("/", 1)[0] for i in ids):
        if dataset not in reader.table:
            continue
        for part in ("train", "test"):
            known.update(str(i) for i in reader.split(dataset, part).ids)
    lost = [i for i in ids if i not in known]
    if lost:
        raise DataError(f"{where}: {len(lost)} sample id(s) are not in the info JSONs on disk, first: {lost[0]!r}")


def _records(reader: FifReader, ids: Sequence[str], part: str) -> list[tuple[str, int, InfoRecord]]:
    """(dataset, row index in its split, record) per sample id."""
    index: dict[str, dict[str, int]] = {}
    out = []
    for sample_id in ids:
        dataset = sample_id.split("/", 1)[0]
        if dataset not in index:
            index[dataset] = {str(s): i for i, s in enumerate(reader.split(dataset, part).ids)}
        row = index[dataset][sample_id]
        out.append((dataset, row, reader.split(dataset, part).records[row]))
    return out


def task_data(reader: FifReader, stream: FifStream, task: FifTask, part: str = "train") -> ImageDataset:
    """A task's images (decoded once per dataset split); labels are positions in the stream's class order."""
    ids = task.train_ids if part == "train" else task.test_ids
    if not ids:
        raise DataError(f"task {task.index} has no {part} images")
    position = {c: i for i, c in enumerate(stream.class_order)}
    images, labels = [], []
    for dataset, row, record in _records(reader, ids, part):
        split = reader.split(dataset, part)
        name = split.classnames[record.target] if split.classnames else record.classname
        images.append(reader.images(dataset, part).images[row])
        labels.append(position[f"{dataset}{SEPARATOR}{name}"])
    return ImageDataset(np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(ids),
                        f"fif/task{task.index}/{part}", tuple(stream.class_order))


def task_captions(reader: FifReader, task: FifTask, seed: int, epoch: int = 0) -> list[str]:
    """One training caption per training image of ``task``, drawn by the caption rule from ``(seed, task, epoch)``."""
    rng = np.random.default_rng([seed, task.index, epoch])
    return [training_caption(record, reader.table[dataset], rng)
            for dataset, _, record in _records(reader, task.train_ids, "train")]


def to_experiences(reader: FifReader, stream: FifStream) -> list[Experience]:
    """The stream as :class:`Experience` objects: train and test images of each task's classes."""
    out: list[Experience] = []
    seen = 0
    for task in stream.tasks:
        seen += len(task.classes)
        test = task_data(reader, stream, task, "test") if task.test_ids else None
        if test is None:
            raise DataError(f"task {task.index} has no test images; every adaptation dataset ships a test split")
        out.append(Experience(
            index=task.index, train=task_data(reader, stream, task, "train"), test=test,
            classes=tuple(range(seen - len(task.classes), seen)), num_seen_classes=seen,
            metadata={"benchmark": BENCHMARK, "datasets": list(task.datasets), "classes": list(task.classes),
                      "captions": stream.about.get("captions", "released")},
            earlier=tuple(out),
        ))
    return out
