"""``benchmark=mtil``: the 11 datasets of MTIL (ZSCL, Zheng et al. ICCV 2023) read from ``data_root``.

Each entry names its reader (layouts in :mod:`.mtil_folders`, :mod:`.mnist`, :mod:`.stanford_cars`, and the
CIFAR-100 pickles of :mod:`.cifar`) and ZSCL's first prompt template (``templates[0]``, what CoDyRA and ZSCL
train and score with). ``benchmark.datasets`` picks a subset and an order; the default is the papers' order.
Every chosen dataset is listed when the source opens, so a missing one fails before any training, with a
one-line error naming the file and where the dataset is published. Images are decoded only when a stream
asks for them, and only the samples it asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.benchmarks import mtil_folders as F
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.listing import Lister, Listing
from fluxbench.benchmarks.mnist import list_cifar100, list_mnist
from fluxbench.benchmarks.stanford_cars import list_stanford_cars
from fluxbench.errors import ConfigError


@dataclass(frozen=True)
class MtilDataset:
    name: str
    lister: Lister
    template: str  # ZSCL's templates[0]

    def prompts(self, classnames: Sequence[str]) -> list[str]:
        return [self.template.format(c) for c in classnames]


DATASETS: dict[str, MtilDataset] = {d.name: d for d in (
    MtilDataset("aircraft", F.list_aircraft, "a photo of a {}, a type of aircraft."),
    MtilDataset("caltech101", F.list_caltech101, "a photo of a {}."),
    MtilDataset("cifar100", list_cifar100, "a photo of a {}."),
    MtilDataset("dtd", F.list_dtd, "a photo of a {} texture."),
    MtilDataset("eurosat", F.list_eurosat, "a centered satellite photo of {}."),
    MtilDataset("flowers", F.list_flowers102, "a photo of a {}, a type of flower."),
    MtilDataset("food", F.list_food101, "a photo of a {}, a type of food."),
    MtilDataset("mnist", list_mnist, 'a photo of the number: "{}".'),
    MtilDataset("pets", F.list_oxford_pets, "a photo of a {}, a type of pet."),
    MtilDataset("cars", list_stanford_cars, "a photo of a {}, a type of car."),
    MtilDataset("sun397", F.list_sun397, "a photo of a {}."),
)}
ORDER = tuple(DATASETS)  # the MTIL order of ZSCL and CoDyRA (Aircraft ... SUN397)
ALIASES = {"fgvc_aircraft": "aircraft", "flowers102": "flowers", "food101": "food", "oxfordpet": "pets",
           "oxford_pets": "pets", "stanfordcars": "cars", "stanford_cars": "cars"}


def dataset_names(names: Sequence[str] | None) -> list[str]:
    """``benchmark.datasets`` (case-insensitive, readers' names accepted) as MTIL names; ``None``: all 11."""
    out = []
    for name in names or ORDER:
        key = ALIASES.get(str(name).lower(), str(name).lower())
        if key not in DATASETS:
            raise ConfigError(f"benchmark.datasets: unknown MTIL dataset {name!r}; known: {', '.join(ORDER)}")
        out.append(key)
    if len(set(out)) != len(out):
        raise ConfigError(f"benchmark.datasets lists a dataset twice: {list(names or ())}")
    return out


class MtilSource:
    """The chosen datasets, listed from ``data_root``; decoded by :class:`ResizeRule` sample by sample asked."""

    def __init__(self, cfg: Mapping[str, Any], data_root: str | Path) -> None:
        self.data_root = Path(data_root).expanduser()
        self.names = dataset_names(cfg.get("datasets"))
        self.rule = ResizeRule(int(cfg.get("image_size", 224)), float(cfg.get("crop_pct", 1.0)),
                               str(cfg.get("interpolation", "bicubic")))
        options = dict(cfg.get("options") or {})
        self.listings: dict[str, Listing] = {
            n: DATASETS[n].lister(self.data_root, **dict(options.get(n) or {})) for n in self.names}

    @property
    def about(self) -> dict[str, Any]:
        """What fixes the data (for the run's fingerprint)."""
        sizes = {n: [len(v.train), len(v.test)] for n, v in self.listings.items()}
        return {"root": str(self.data_root), "sizes": sizes, "rule": [self.rule.image_size, self.rule.crop_pct]}

    def labels(self, name: str, split: str) -> np.ndarray:
        return self.listings[name].part(split).labels

    def images(self, name: str, split: str, index: np.ndarray | None = None) -> ImageDataset:
        return self.listings[name].decode(split, self.rule, index)

    def prompts(self, name: str) -> list[str]:
        return DATASETS[name].prompts(self.listings[name].classnames)
