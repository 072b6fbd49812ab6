"""Dataset readers by name.

A reader is registered with ``@register_dataset("name")`` and is called as::

    reader(data_root: pathlib.Path, **options) -> DataSplit

``options`` are the keys of the dataset spec in the benchmark config other than
``dataset`` and ``classes`` (class selection is applied afterwards, by
:func:`load_dataset`). Readers must not download anything: a missing file is a
:class:`~fluxbench.errors.DataError` naming the file and where the data set is published.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fluxbench.benchmarks.base import DataSplit
from fluxbench.errors import ConfigError, DataError

Reader = Callable[..., DataSplit]
_READERS: dict[str, Reader] = {}

# released corruption sets, read many domains at a time, registered with ``@register_domain_set("name")``:
#     reader(data_root: pathlib.Path, domains: list[(corruption, severity)], **options) -> {domain: ImageDataset}
DomainSetReader = Callable[..., dict]
_DOMAIN_SETS: dict[str, DomainSetReader] = {}


def register_domain_set(name: str) -> Callable[[DomainSetReader], DomainSetReader]:
    def wrap(fn: DomainSetReader) -> DomainSetReader:
        _DOMAIN_SETS[name] = fn
        return fn

    return wrap


def list_domain_sets() -> list[str]:
    return sorted(_DOMAIN_SETS)


def load_domain_set(name: Any, data_root: str | Path, domains: list[tuple[str, int]], **options: Any) -> dict:
    """The released files of a corruption set (``cifar10_c``, ``imagenet_c``...), one dataset per domain."""
    if name not in _DOMAIN_SETS:
        raise ConfigError(f"released corruption files are read for {', '.join(list_domain_sets())}; got dataset "
                          f"{name!r}")
    return _DOMAIN_SETS[name](Path(data_root), domains=domains, **options)


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        if name in _READERS and _READERS[name] is not fn:
            raise ValueError(f"dataset {name!r} is registered twice")
        _READERS[name] = fn
        return fn

    return wrap


def list_datasets(pattern: str = "*") -> list[str]:
    return sorted(n for n in _READERS if fnmatch.fnmatch(n, pattern))


def parse_classes(classes: Any) -> list[int] | None:
    """``None``, a list of ids, or an inclusive range written ``"0-49"``."""
    if classes is None:
        return None
    if isinstance(classes, str):
        lo, sep, hi = classes.partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ConfigError(f"classes must be a list or a range like '0-49', got {classes!r}")
        return list(range(int(lo), int(hi) + 1))
    return [int(c) for c in classes]


def load_dataset(spec: Mapping[str, Any], data_root: str | Path) -> DataSplit:
    """Read the dataset a spec names (``{dataset: cifar100, classes: 0-49, ...}``)."""
    spec = dict(spec)
    name = spec.pop("dataset", None)
    if name not in _READERS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    classes = parse_classes(spec.pop("classes", None))
    split = _READERS[name](Path(data_root).expanduser(), **spec)
    if classes is None:
        return split
    missing = sorted(set(classes) - set(range(split.num_classes)))
    if missing:
        raise DataError(
            f"{name}: classes {missing[:5]} requested, but the data set has classes 0..{split.num_classes - 1}"
        )
    train, test = split.train.with_classes(classes), split.test.with_classes(classes)
    return DataSplit(train, test, len(classes), split.data_split)
