"""The few-shot, dataset-incremental CLIP stream and its two label spaces (MTIL and X-TAIL).

Each task is one dataset of a FoMo-in-Flux tree (the released layout, or the embedded digits tree whose
sub-domains serve as datasets): ``shots`` training images per class drawn by a seeded generator, the whole
test split, and the dataset's class prompts (its PRIMER around each class name). After every task every
dataset is scored twice:

- **MTIL** (task-incremental): among the dataset's own classes;
- **X-TAIL** (task-agnostic): among the union of class prompts, deduplicated by text, of every dataset of the
  stream (``label_space="all"``, the official ``evaluation``) or of the datasets trained so far plus the one
  scored (``"seen"``); a prediction is right when its prompt is the image's class prompt. Where datasets
  share prompts (the digits sub-domains all use MNIST's PRIMER), the union collapses and X-TAIL equals MTIL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fluxbench.errors import ConfigError
from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.fomo.captions import class_prompts
from fluxbench.fomo.info import FifReader
from fluxbench.streams.experience import PROMPTS_KEY, Experience

LABEL_SPACES = ("all", "seen")


def stream_datasets(cfg: Mapping[str, Any]) -> tuple[FifReader, list[str]]:
    """The reader and the task datasets in order: ``protocol.datasets``, else the benchmark's datasets in the
    order its stream first uses them."""
    if cfg["benchmark"].get("kind") != "fomo_in_flux":
        raise ConfigError(f"protocol=mtil needs a FoMo-in-Flux benchmark (benchmark=fomo_digits or fomo_in_flux), "
                          f"not {cfg['benchmark'].get('name')!r}")
    bench = open_benchmark(dict(cfg["benchmark"], dataset_incremental=True), cfg["data_root"])
    names = cfg["protocol"].get("datasets") or bench.adapt_datasets
    return bench.reader, [bench.reader.table[str(n)].name for n in names]


def few_shot(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def build_clip_stream(reader: FifReader, names: Sequence[str], shots: int, seed: int,
                      test_limit: int | None = None) -> list[Experience]:
    """One experience per dataset; the few-shot draw is fixed by ``(seed, task index)``."""
    if shots < 1:
        raise ConfigError(f"protocol.shots must be >= 1, got {shots}")
    stream = []
    for i, name in enumerate(names):
        train, test = reader.images(name, "train"), reader.images(name, "test")
        split = reader.split(name, "test")
        keep = few_shot(np.asarray(train.labels), shots, np.random.default_rng([seed, i]))
        if test_limit is not None:
            test = test.subset(np.arange(min(int(test_limit), len(test))))
        prompts = class_prompts(split.classnames, split.dataset)
        stream.append(Experience(i, train.subset(keep), test, tuple(range(len(prompts))), len(prompts),
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
