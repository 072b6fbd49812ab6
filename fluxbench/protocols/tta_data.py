"""The data of an online test-time adaptation run: corrupted domains, the stream per seed, batches.

A TTA benchmark config names its domains in ``benchmark.corruptions``:

- ``source: engine``: the clean ``benchmark.evaluation`` data (the ``parts`` listed; for digits-C
  the whole pool) corrupted by fluxbench's engine with the ``params`` table and the fixed pixel
  ``seed``, so every run and every seed sees the same images;
- ``source: released``: the released files of ``benchmark.evaluation.dataset`` (``cifar10_c``,
  ``cifar100_c``, ``imagenet_c``), read once per domain with the spec's other options.

Every domain is built once per protocol call; each seed then shuffles the samples of each
domain its own way (:func:`fluxbench.streams.domains.corruption_stream`). Batches are converted
from uint8 one at a time, so a long stream (ImageNet-C "mixed" is 75,000 images) never exists
as floats all at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxbench.benchmarks import load_dataset, load_domain_set
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.corruptions import CORRUPTIONS, corrupt_dataset
from fluxbench.streams.domains import Domain, corruption_stream, domain_sequence
from fluxbench.streams.experience import Experience

SOURCES = ("engine", "released")


def tta_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark's ``corruptions`` node with defaults filled in, plus the stream setting."""
    opts = dict(cfg["benchmark"].get("corruptions") or {})
    if not opts:
        raise ConfigError(f"benchmark {cfg['benchmark'].get('name')!r} defines no corruptions; protocol=online_tta "
                          "needs a TTA benchmark such as benchmark=digits_c, cifar10_c or imagenet_c")
    opts.setdefault("source", "engine")
    if opts["source"] not in SOURCES:
        raise ConfigError(f"benchmark.corruptions.source={opts['source']!r}; use one of {', '.join(SOURCES)}")
    opts["names"] = list(opts.get("names") or CORRUPTIONS)
    opts["setting"] = str(cfg["stream"].get("setting") or "continual")
    return opts


def domain_blocks(opts: Mapping[str, Any]) -> list[Domain]:
    return domain_sequence(opts["setting"], opts["names"], opts.get("severities"))


def load_domains(cfg: Mapping[str, Any], role: str = "evaluation", device: torch.device | str = "cpu"
                 ) -> tuple[dict[Domain, ImageDataset], int]:
    """Every distinct (corruption, severity) of the configured stream, as uint8 datasets; and the class count.

    Engine-made domains are corrupted on ``device`` (the same seed gives the same pixels on the same device type).
    """
    opts = tta_options(cfg)
    needed = list(dict.fromkeys(domain_blocks(opts)))
    spec = dict(cfg["benchmark"][role])
    data_root = Path(cfg["data_root"])
    if opts["source"] == "released":
        domains = load_domain_set(spec.pop("dataset", None), data_root, needed, **spec)
        num_classes = max(max(len(d.class_names), int(d.labels.max(initial=-1)) + 1) for d in domains.values())
        return domains, num_classes
    clean, num_classes = _clean(spec, data_root, opts.get("parts") or ["test"])
    chunk = int(opts.get("chunk_size", 256))
    seed, params = int(opts.get("seed", 0)), str(opts.get("params", "imagenet"))
    frost = opts.get("frost_dir")
    domains = {(c, s): corrupt_dataset(clean, c, s, seed, params, chunk, device, frost) for c, s in needed}
    return domains, num_classes


def _clean(spec: Mapping[str, Any], data_root: Path, parts: list[str]) -> tuple[ImageDataset, int]:
    bad = [p for p in parts if p not in ("train", "test")]
    if bad:
        raise ConfigError(f"benchmark.corruptions.parts {bad}: use train and/or test")
    split = load_dataset(spec, data_root)
    chosen = [split.train if p == "train" else split.test for p in parts]
    chosen = [d for d in chosen if len(d)]
    if not chosen:
        raise DataError(f"{spec.get('dataset')}: the parts {parts} hold no images to corrupt")
    if len(chosen) == 1:
        return chosen[0], split.num_classes
    name = chosen[0].name.rsplit("/", 1)[0]
    pooled = ImageDataset(
        np.concatenate([np.asarray(d.images) for d in chosen]), np.concatenate([d.labels for d in chosen]),
        np.concatenate([d.ids for d in chosen]), name, chosen[0].class_names,
    )
    return pooled, split.num_classes


def domains_fingerprint(domains: Mapping[Domain, ImageDataset]) -> str:
    """One content hash over every domain's images and labels (in domain order)."""
    digest = hashlib.blake2b(digest_size=12)
    for (name, severity), data in sorted(domains.items()):
        digest.update(f"{name}/{severity}:{data.fingerprint()};".encode())
    return digest.hexdigest()


def seed_stream(cfg: Mapping[str, Any], domains: Mapping[Domain, ImageDataset], num_classes: int,
                seed: int) -> list[Experience]:
    """The experiences of the configured setting for one seed (sample order by ``seed``)."""
    opts = tta_options(cfg)
    return corruption_stream(None, opts["setting"], opts["names"], opts.get("severities"), seed=seed,
                             prebuilt=domains, num_classes=num_classes)


def unlabeled_batches(data: ImageDataset, batch_size: int, device: torch.device | str
                      ) -> Iterator[tuple[torch.Tensor, np.ndarray, slice]]:
    """``(x, labels, rows)`` in stream order: x float (B, C, H, W) in [0, 1] on ``device``, converted per batch.

    The labels stay with the protocol (numpy, CPU); a method only ever sees ``x``.
    """
    for start in range(0, len(data), batch_size):
        rows = slice(start, min(start + batch_size, len(data)))
        pixels = torch.from_numpy(np.ascontiguousarray(data.images[rows]))
        x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        yield x.contiguous(), np.asarray(data.labels[rows]), rows
