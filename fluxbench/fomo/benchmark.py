"""A FoMo-in-Flux benchmark config (``conf/benchmark/fomo_*.yaml``) -> the reader, the stream and what is scored.

Keys (see ``fomo_in_flux.yaml`` for the released data and ``fomo_digits.yaml`` for the embedded default):
``source`` (``released``: a tree under ``data_root``; ``digits``: the embedded tree, built under the cache),
``root`` (the released tree, relative to ``data_root`` unless absolute), ``stream`` (an ordering file by name
or path; null: the digits tree's own), ``num_tasks`` (T), ``dataset_incremental``, ``reshuffle_seed``,
``manifest`` (replay exactly these tasks), ``caption_seed`` (the caption rule's draws), ``image_size`` /
``crop_pct`` (decode-once rule), ``eval_datasets`` (null: every evaluation-only dataset on disk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.errors import ConfigError
from fluxbench.fomo.info import FifReader
from fluxbench.fomo.streams import FifStream, stream_from_file, stream_from_manifest

SOURCES = ("released", "digits")


@dataclass(frozen=True)
class FifBenchmark:
    reader: FifReader
    stream: FifStream
    adapt_datasets: tuple[str, ...]  # scored for knowledge accumulation (A_KA): the stream's datasets
    eval_datasets: tuple[str, ...]  # scored for zero-shot retention (A_ZS)
    caption_seed: int


def _root(cfg: Mapping[str, Any], data_root: Path) -> Path:
    source = cfg.get("source", "released")
    if source not in SOURCES:
        raise ConfigError(f"benchmark.source must be one of {SOURCES}, got {source!r}")
    if source == "digits":
        from fluxbench.fomo.digits import digits_fif  # builds the tree (and its images) on first use

        digits = dict(cfg.get("digits") or {})
        # the tree is built for its own T; the stream is cut again below for num_tasks, so T needs no new images
        return digits_fif(str(digits.get("pool", "evaluation")), seed=int(digits.get("seed", 0))).root
    root = Path(str(cfg.get("root") or "fomo_in_flux")).expanduser()
    return root if root.is_absolute() else data_root / root


def _default_stream(cfg: Mapping[str, Any]) -> str:
    if cfg.get("stream"):
        return str(cfg["stream"])
    if cfg.get("source") == "digits":
        return f"mini_random_{int(dict(cfg.get('digits') or {}).get('seed', 0))}"
    raise ConfigError("benchmark.stream is missing; name a stream_construction/ file such as random_sequence_1")


def _eval_datasets(reader: FifReader, names: Any) -> tuple[str, ...]:
    if names is not None:
        return tuple(reader.table[str(n)].name for n in names)
    on_disk = [row.name for row in reader.table.by_role("eval")
               if (reader.layout.image_root / row.name).is_dir()
               and reader.layout.info_file(row.name, row.split_name("test")).is_file()]
    return tuple(on_disk)


def open_benchmark(cfg: Mapping[str, Any], data_root: str | Path) -> FifBenchmark:
    """Reader, stream (from ``manifest`` when given, else the ordering file cut into ``num_tasks``) and the
    datasets each FiF metric averages over."""
    root = _root(cfg, Path(data_root))
    rule = ResizeRule(int(cfg.get("image_size", 224)), float(cfg.get("crop_pct", 1.0)))
    reader = FifReader.from_root(root, rule=rule)
    if cfg.get("manifest"):
        stream = stream_from_manifest(reader, cfg["manifest"])
    else:
        seed = cfg.get("reshuffle_seed")
        stream = stream_from_file(reader, _default_stream(cfg), int(cfg.get("num_tasks", 20)),
                                  bool(cfg.get("dataset_incremental", False)),
                                  None if seed is None else int(seed))
    adapt = tuple(dict.fromkeys(d for task in stream.tasks for d in task.datasets))
    return FifBenchmark(reader, stream, adapt, _eval_datasets(reader, cfg.get("eval_datasets")),
                        int(cfg.get("caption_seed", 0)))
