"""The few-shot, dataset-incremental CLIP stream and its two label spaces (MTIL and X-TAIL).

Each task is one dataset, of ``benchmark=mtil`` (the 11 MTIL datasets in their released layouts,
:mod:`fluxbench.benchmarks.mtil`, prompted with ZSCL's templates) or of a FoMo-in-Flux tree (the released
layout, or the embedded digits tree whose sub-domains serve as datasets, prompted with their PRIMERs):
``shots`` training images per class drawn by a seeded generator, the whole test split, and the dataset's
class prompts. After every task every dataset is scored twice:

- **MTIL** (task-incremental): among the dataset's own classes;
- **X-TAIL** (task-agnostic): among the union of class prompts, deduplicated by text, of every dataset of the
  stream (``label_space="all"``, the official ``evaluation``) or of the datasets trained so far plus the one
  scored (``"seen"``); a prediction is right when its prompt is the image's class prompt. Where datasets
  share prompts (the digits sub-domains all use MNIST's PRIMER), the union collapses and X-TAIL equals MTIL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.mtil import MtilSource
from fluxbench.errors import ConfigError
from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.fomo.captions import class_prompts
from fluxbench.fomo.info import FifReader
from fluxbench.streams.experience import PROMPTS_KEY, Experience

LABEL_SPACES = ("all", "seen")


class ClipSource(Protocol):
    """Where a CLIP stream's datasets come from: labels to draw from, images decoded on demand, class prompts."""

    names: list[str]

    @property
    def about(self) -> dict[str, Any]: ...

    def labels(self, name: str, split: str) -> np.ndarray: ...

    def images(self, name: str, split: str, index: np.ndarray | None = None) -> ImageDataset: ...

    def prompts(self, name: str) -> list[str]: ...


class FifSource:
    """A FoMo-in-Flux tree's datasets (``kind: fomo_in_flux``), prompts from each dataset's PRIMER."""

    def __init__(self, reader: FifReader, names: Sequence[str]) -> None:
        self.reader, self.names = reader, [reader.table[str(n)].name for n in names]

    @property
    def about(self) -> dict[str, Any]:
        return {"root": str(self.reader.layout.image_root)}

    def labels(self, name: str, split: str) -> np.ndarray:
        return self.reader.split(name, split).targets

    def images(self, name: str, split: str, index: np.ndarray | None = None) -> ImageDataset:
        images = self.reader.images(name, split)
        return images if index is None else images.subset(index)

    def prompts(self, name: str) -> list[str]:
        split = self.reader.split(name, "test")
        return class_prompts(split.classnames, split.dataset)


def open_source(cfg: Mapping[str, Any]) -> ClipSource:
    """``benchmark=mtil`` (the 11 MTIL datasets from ``data_root``) or a FoMo-in-Flux benchmark, whose task
    datasets are ``protocol.datasets``, else its datasets in the order its stream first uses them."""
    kind = cfg["benchmark"].get("kind")
    if kind == "mtil":
        if cfg["protocol"].get("datasets"):
            raise ConfigError("with benchmark=mtil choose the datasets with benchmark.datasets=[...], "
                              "not protocol.datasets")
        return MtilSource(cfg["benchmark"], cfg["data_root"])
    if kind != "fomo_in_flux":
        raise ConfigError(f"protocol=mtil needs benchmark=mtil or a FoMo-in-Flux benchmark (fomo_digits, "
                          f"fomo_in_flux), not {cfg['benchmark'].get('name')!r}")
    bench = open_benchmark(dict(cfg["benchmark"], dataset_incremental=True), cfg["data_root"])
    return FifSource(bench.reader, cfg["protocol"].get("datasets") or bench.adapt_datasets)


def few_shot(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def build_clip_stream(source: ClipSource, shots: int, seed: int, test_limit: int | None = None
                      ) -> list[Experience]:
    """One experience per dataset; the few-shot draw is fixed by ``(seed, task index)``; only the drawn
    training images and the scored test images are decoded."""
    if shots < 1:
        raise ConfigError(f"protocol.shots must be >= 1, got {shots}")
    stream = []
    for i, name in enumerate(source.names):
        keep = few_shot(np.asarray(source.labels(name, "train")), shots, np.random.default_rng([seed, i]))
        tests = len(source.labels(name, "test"))
        test_index = None if test_limit is None else np.arange(min(int(test_limit), tests))
        train, test = source.images(name, "train", keep), source.images(name, "test", test_index)
        prompts = source.prompts(name)
        stream.append(Experience(i, train, test, tuple(range(len(prompts))), len(prompts),
                                 {"dataset": name, PROMPTS_KEY: prompts, "shots": shots}))
    return stream


def union_prompts(stream: Sequence[Experience], members: Sequence[int]) -> list[str]:
    """The distinct class prompts of the experiences ``members``, in stream order."""
    return list(dict.fromkeys(p for i in members for p in stream[i].metadata[PROMPTS_KEY]))


@torch.no_grad()
def _image_features(method: Any, exp: Experience, device: torch.device, batch_size: int) -> torch.Tensor:
    return torch.cat([method.image_features(x) for x, _ in exp.test_batches(batch_size, device)])


@torch.no_grad()
def evaluate_row(method: Any, stream: Sequence[Experience], i: int, mtil: np.ndarray, xtail: np.ndarray,
                 device: torch.device, label_space: str = "all", batch_size: int = 128) -> None:
    """Fill row ``i`` (after training on task ``i``) of both accuracy matrices, over every dataset."""
    if label_space not in LABEL_SPACES:
        raise ConfigError(f"protocol.xtail_label_space must be one of {LABEL_SPACES}, got {label_space!r}")
    everything = union_prompts(stream, range(len(stream)))
    text = method.text_features(everything)
    column = {p: k for k, p in enumerate(everything)}
    for j, exp in enumerate(stream):
        image = _image_features(method, exp, device, batch_size)
        labels = torch.as_tensor(np.asarray(exp.test.labels), device=image.device)
        own = [column[p] for p in exp.metadata[PROMPTS_KEY]]
        mtil[i, j] = float((( image @ text[own].t()).argmax(1) == labels).float().mean())
        members = range(len(stream)) if label_space == "all" else sorted({*range(i + 1), j})
        space = [column[p] for p in union_prompts(stream, members)]
        picked = torch.as_tensor(space, device=image.device)[(image @ text[space].t()).argmax(1)]
        xtail[i, j] = float((picked == torch.as_tensor(own, device=image.device)[labels]).float().mean())
