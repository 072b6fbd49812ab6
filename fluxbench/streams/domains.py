"""Domain-shift streams for online test-time adaptation: corruption x severity sequences.

The settings of mariodoebler/test-time-adaptation (``classification/test_time.py``):

- ``continual``: every corruption in the given order at the given severities (default 5),
  one experience per (corruption, severity); the model is reset only before the first.
- ``reset_each_shift``: the same experiences; the model is reset whenever the domain (the
  corruption or its severity) changes (``metadata["reset_before"]``), so each (corruption,
  severity) is adapted to from scratch, as CEMA's and Tent's published per-domain numbers are.
- ``gradual``: every corruption traversed at severities 1, 2, 3, 4, 5, 4, 3, 2, 1 (nine
  experiences per corruption; the next corruption starts again at 1); reset once.
- ``mixed``: one experience holding every domain, concatenated and shuffled jointly;
  ``metadata["sample_domain"][i]`` indexes ``metadata["domains"]`` for test sample ``i``.

Within an experience the samples are shuffled once by ``seed``; the generator is re-made
for every experience, so equal-sized domains share one permutation (the reference code
re-seeds before each loader). Domains come from released files (``prebuilt``: CIFAR-10-C,
ImageNet-C readers) or from a clean dataset corrupted by the engine (digits-C,
ImageNet-R-C), stored as uint8 like the released data.

Each experience: ``train=None``, ``test`` the corrupted images in stream order,
``classes`` all classes, ``metadata`` with ``corruption``, ``severity``, ``reset_before``,
``setting`` and ``dataset``. A protocol runs it as: reset when ``reset_before``, then
predict-and-adapt on ``exp.test_batches(batch_size)`` in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.corruptions import CORRUPTIONS, corrupt_dataset, get_corruption
from fluxbench.streams.experience import Experience

SETTINGS = ("continual", "gradual", "mixed", "reset_each_shift")
_ALIASES = {"mixed_domains": "mixed"}
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)
Domain = tuple[str, int]


def domain_sequence(
    setting: str, corruptions: Sequence[str], severities: Sequence[int] | int | None = None
) -> list[Domain]:
    """The (corruption, severity) blocks of a setting, in stream order (``mixed``: the blocks it pools).

    ``severities`` defaults to ``[5]`` (``gradual``: 1..5..1); ``gradual`` given a single
    severity uses 1..5..1 as the reference code does, and a list is used as the per-corruption sequence.
    """
    setting = _ALIASES.get(setting, setting)
    if setting not in SETTINGS:
        raise ConfigError(f"unknown stream setting {setting!r}; settings: {', '.join(SETTINGS)}")
    if isinstance(corruptions, str) or not corruptions:
        raise ConfigError(f"corruptions must be a non-empty list of names, got {corruptions!r}")
    levels = [5] if severities is None else [severities] if isinstance(severities, int) else list(severities)
    bad = [s for s in levels if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= 5]
    if bad or not levels:
        raise ConfigError(f"severities must be integers 1..5, got {severities!r}")
    if setting == "gradual" and (severities is None or len(levels) == 1):
        levels = list(GRADUAL_SEVERITIES)
    return [(str(c), int(s)) for c in corruptions for s in levels]


def _domains(
    needed: list[Domain],
    clean: ImageDataset | None,
    prebuilt: Mapping[Domain, ImageDataset] | None,
    corruption_seed: int,
    params: str,
    chunk_size: int,
    device: torch.device | str,
    frost_dir: str | Path | None,
) -> dict[Domain, ImageDataset]:
    """Each distinct domain once: from ``prebuilt`` when it has it, else made from ``clean`` by the engine."""
    made: dict[Domain, ImageDataset] = {}
    for domain in dict.fromkeys(needed):
        if prebuilt is not None and prebuilt.get(domain) is not None:
            made[domain] = prebuilt[domain]
        elif clean is not None:
            get_corruption(domain[0])  # an unknown name fails in one line, naming the registered ones
            made[domain] = corrupt_dataset(clean, domain[0], domain[1], corruption_seed, params, chunk_size, device,
                                           frost_dir)
        else:
            raise DataError(f"domain {domain[0]} at severity {domain[1]} is not among the read files and there is "
                            f"no clean dataset to corrupt; read it or pass clean=")
    return made


def _num_classes(datasets: list[ImageDataset], num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    names = max((len(d.class_names) for d in datasets), default=0)
    top = max((int(d.labels.max()) + 1 for d in datasets if len(d)), default=0)
    return max(names, top)


def _shuffled(data: ImageDataset, seed: int, shuffle: bool) -> ImageDataset:
    if not shuffle:
        return data
    return data.subset(np.random.default_rng(seed).permutation(len(data)))


def corruption_stream(
    clean: ImageDataset | None,
    setting: str,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] | int | None = None,
    seed: int = 1,
    params: str = "imagenet",
    prebuilt: Mapping[Domain, ImageDataset] | None = None,
    *,
    corruption_seed: int | None = None,
    chunk_size: int = 256,
    device: torch.device | str = "cpu",
    shuffle: bool = True,
    num_classes: int | None = None,
    frost_dir: str | Path | None = None,
) -> list[Experience]:
    """The experiences of ``setting`` over ``corruptions`` x ``severities`` (see the module docstring).

    ``seed`` orders the samples; ``corruption_seed`` (default ``seed``) and ``chunk_size``
    fix the pixels of engine-made domains, so several seeds can share one corrupted set.
    """
    setting = _ALIASES.get(setting, setting)
    blocks = domain_sequence(setting, corruptions, severities)
    seed_of_pixels = seed if corruption_seed is None else corruption_seed
    data = _domains(blocks, clean, prebuilt, seed_of_pixels, params, chunk_size, device, frost_dir)
    sizes = {len(d) for d in data.values()}
    if 0 in sizes:
        raise DataError(f"domains {[k for k, d in data.items() if len(d) == 0][:3]} have no images")
    classes = tuple(range(_num_classes(list(data.values()), num_classes)))
    source = (clean.name if clean is not None else next(iter(data.values())).name.split("/")[0])
    if setting == "mixed":
        return [_mixed(blocks, data, seed, shuffle, classes, source)]
    experiences = []
    for index, (name, severity) in enumerate(blocks):
        # CEMA's and Tent's published numbers re-create the model per corruption *and* severity
        shift = index == 0 or (setting == "reset_each_shift" and blocks[index - 1] != (name, severity))
        experiences.append(Experience(
            index=index, train=None, test=_shuffled(data[(name, severity)], seed, shuffle), classes=classes,
            num_seen_classes=len(classes),
            metadata={"corruption": name, "severity": severity, "reset_before": shift, "setting": setting,
                      "dataset": source},
        ))
    return experiences


def _mixed(
    blocks: list[Domain], data: dict[Domain, ImageDataset], seed: int, shuffle: bool, classes: tuple[int, ...],
    source: str,
) -> Experience:
    """One experience of all blocks concatenated, then shuffled jointly by ``seed``."""
    parts = [data[b] for b in blocks]
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"mixed needs one image shape across domains, got {sorted(shapes)}")
    sample_domain = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    pooled = ImageDataset(
        np.concatenate([np.asarray(p.images) for p in parts]), np.concatenate([p.labels for p in parts]),
        np.concatenate([p.ids for p in parts]), f"{source}/mixed", parts[0].class_names,
    )
    order = np.random.default_rng(seed).permutation(len(pooled)) if shuffle else np.arange(len(pooled))
    severities = {s for _, s in blocks}
    return Experience(
        index=0, train=None, test=pooled.subset(order), classes=classes, num_seen_classes=len(classes),
        metadata={
            "corruption": "mixed", "severity": severities.pop() if len(severities) == 1 else None,
            "reset_before": True, "setting": "mixed", "dataset": source,
            "domains": [{"corruption": c, "severity": s} for c, s in blocks],
            "sample_domain": sample_domain[order].tolist(),
        },
    )
