"""The 63 FoMo-in-Flux datasets as rows of one table (spec ``fomo_in_flux.md`` sections 2 and 9).

One generic reader covers every dataset, so what differs between them is data, not code:
the folder / info-JSON name used on disk and in stream entries (``DTD``, ``FGVCAircraft``, ...),
the PRIMER prompt template, the role in the benchmark (``adapt``: streamed and counted in
knowledge accumulation; ``eval``: zero-shot retention only), the task type (``classification``
or ``retrieval``) and the split names of the info JSONs. PRIMERs and split names are those of
the release's ``data_lib/<name>.py`` at commit 3e123d9; roles follow the paper's 41 + 22 split
(``configs/experiment/continualfomo_default.yaml``), not the modules' ``eval_only`` flags,
which are False for most evaluation-only datasets there.

Datasets outside the release (a user's mini-FiF) are described by extra rows in
``data_lib/00_info/fluxbench_datasets.json`` (see :func:`read_extra_rows`), written by
:mod:`fluxbench.fomo.mini`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fluxbench.errors import ConfigError, DataError

ROLES = ("adapt", "eval")
KINDS = ("classification", "retrieval")
EXTRA_ROWS_FILE = "fluxbench_datasets.json"


@dataclass(frozen=True)
class FifDataset:
    """One dataset: ``name`` is its folder under ``data/``, its info-JSON prefix and its stream prefix."""

    name: str
    primer: str
    role: str = "adapt"
    kind: str = "classification"
    handle: str = ""  # the release's lower-case module name (``oxford_pets``), also accepted as a name
    splits: tuple[str, str] = ("train", "test")
    captions: str = "released"  # "templated" for a mini-FiF built from class names only

    def __post_init__(self) -> None:
        if self.role not in ROLES or self.kind not in KINDS:
            raise ConfigError(f"dataset {self.name}: role must be one of {ROLES} and kind one of {KINDS}, "
                              f"got {self.role!r}, {self.kind!r}")
        if self.primer.count("{}") != 1:
            raise ConfigError(f"dataset {self.name}: PRIMER must contain '{{}}' once, got {self.primer!r}")

    @property
    def eval_only(self) -> bool:
        return self.role == "eval"

    def prime(self, classname: str) -> str:
        return self.primer.format(classname)

    def split_name(self, part: str) -> str:
        """``train``/``test`` -> the split name of the info JSONs (iNaturalist uses ``train_mini``/``val``)."""
        return self.splits[0] if part == "train" else self.splits[1]


_P = "A photo of a {}."
# name, handle, PRIMER, role, kind
_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    # --- 41 adaptation datasets (40 classification + FSCOCO retrieval)
    ("AI2DIAGRAMS", "ai2diagrams", _P, "adapt", "classification"),
    ("ARTBENCH10", "artbench10", "A painting of the artist {}.", "adapt", "classification"),
    ("BIRDSNAP", "birdsnap", "A photo of the bird {}.", "adapt", "classification"),
    ("CIFAR100", "cifar100", _P, "adapt", "classification"),
    ("CLEVR", "clevr", "A photo of synthetic shapes, with {}.", "adapt", "classification"),
    ("CLRS", "clrs", "A satellite image of a {}.", "adapt", "classification"),
    ("COUNTRY211", "country211", "A photo representing the country of {}.", "adapt", "classification"),
    ("CUB200", "cub200", "A photo of a {}, a type of bird.", "adapt", "classification"),
    ("DF20MINI", "df20mini", "A photo of the fungi {}.", "adapt", "classification"),
    ("DOLLARSTREET", "dollarstreet", _P, "adapt", "classification"),
    ("DOMAINNET_CLIPART", "domainnet_clipart", "A clipart of a {}.", "adapt", "classification"),
    ("DOMAINNET_INFOGRAPH", "domainnet_infograph", "An infograph of a {}.", "adapt", "classification"),
    ("DOMAINNET_PAINTING", "domainnet_painting", "A painting of a {}.", "adapt", "classification"),
    ("DOMAINNET_SKETCH", "domainnet_sketch", "A sketch of a {}.", "adapt", "classification"),
    ("DSPRITES", "dsprites", "A black-and-white photo of a {}.", "adapt", "classification"),
    ("DTD", "dtd", "A photo of a {} texture.", "adapt", "classification"),
    ("FGVCAircraft", "fgvcaircraft", "A photo of a {}, a type of aircraft.", "adapt", "classification"),
    ("FLOWERS102", "flowers102", "A photo of a {}, a type of flower.", "adapt", "classification"),
    ("FRU92", "fru92", "A photo of a {}, a type of fruit.", "adapt", "classification"),
    ("iNATURALIST2021", "inaturalist2021", _P, "adapt", "classification"),
    ("ISICMELANOMA", "isicmelanoma", "A close-up photo of human skin with a mole exhibiting {}.", "adapt",
     "classification"),
    ("MITSTATES", "mitstates", _P, "adapt", "classification"),
    ("MTSD", "mtsd", 'A centered photo of a "{}" traffic sign.', "adapt", "classification"),
    ("MVTECAD_Adapt", "mvtecad_adapt", "A close-up photo of a {}.", "adapt", "classification"),
    ("MVTECAD_Eval", "mvtecad_eval", "A close-up photo of a {}.", "adapt", "classification"),  # MVTec faults
    ("OBJECTNET", "objectnet", _P, "adapt", "classification"),
    ("OBSC_ANIMALS", "obsc_animals", "A photo of the obscure animal {}.", "adapt", "classification"),
    ("OBSC_THINGS", "obsc_things", "A photo of the obscure thing {}.", "adapt", "classification"),
    ("OPENIMAGES", "openimages", _P, "adapt", "classification"),
    ("PATTERNNET", "patternnet", "A satellite image of a {}.", "adapt", "classification"),
    ("PLACES365", "places365", _P, "adapt", "classification"),
    ("PLANTVILLAGE", "plantvillage", "A close-up photo of a {}.", "adapt", "classification"),
    ("QUILT", "quilt", "A histopathology photo depicting {} pathologies.", "adapt", "classification"),
    ("RESISC45", "resisc45", "A satellite image of {}.", "adapt", "classification"),
    ("SHAPES3D", "shapes3d", "A photo of a synthetic {}.", "adapt", "classification"),
    ("SNAKECLEF", "snake_clef", "A photo of a {} snake.", "adapt", "classification"),
    ("SUN397", "sun397", _P, "adapt", "classification"),
    ("SynthCLIP106", "synthclip106", _P, "adapt", "classification"),
    ("VEG200", "veg200", "A photo of a {}, a type of vegetable.", "adapt", "classification"),
    ("ZAPPOS50k", "zappos50k", "A photo of {} shoes.", "adapt", "classification"),
    ("FSCOCO", "fscoco", "A sketch of a {}", "adapt", "retrieval"),
    # --- 22 evaluation-only datasets (20 classification + MSCOCO, Flickr30k retrieval)
    ("CALTECH101", "caltech101", _P, "eval", "classification"),
    ("CALTECH256", "caltech256", _P, "eval", "classification"),
    ("CARS196", "cars196", "A photo of a {}, a type of car.", "eval", "classification"),
    ("CIFAR10", "cifar10", _P, "eval", "classification"),
    ("DOMAINNET_QUICKDRAW", "domainnet_quickdraw", "A quickdraw of a {}.", "eval", "classification"),
    ("EuroSAT", "eurosat", "A centered satellite photo of a {}.", "eval", "classification"),
    ("FashionMNIST", "fashionmnist", "A black-and-white photo of a {}, a type of clothing.", "eval",
     "classification"),
    ("Food101", "food101", "A photo of a {}, a type of food.", "eval", "classification"),
    ("GTSRB", "gtsrb", 'A centered photo of a "{}" traffic sign.', "eval", "classification"),
    ("IMAGENET", "imagenet", _P, "eval", "classification"),
    ("IMAGENET_A", "imagenet_a", _P, "eval", "classification"),
    ("IMAGENET_D", "imagenet_d", _P, "eval", "classification"),
    ("IMAGENET_R", "imagenet_r", _P, "eval", "classification"),
    ("IMAGENET_S", "imagenet_s", _P, "eval", "classification"),
    ("IMAGENET_V2", "imagenet_v2", _P, "eval", "classification"),
    ("MNIST", "mnist", 'A black-and-white photo of the number: "{}".', "eval", "classification"),
    ("MONKEYS10", "monkeys10", "A photo of a {}, a type of monkey.", "eval", "classification"),
    ("OXFORDPETS", "oxford_pets", "A photo of a {}, a type of pet.", "eval", "classification"),
    ("STL10", "stl10", _P, "eval", "classification"),
    ("SVHN", "svhn", 'A photo of the number: "{}".', "eval", "classification"),
    ("MSCOCO", "mscoco", "{}", "eval", "retrieval"),
    ("FLICKR30K", "flickr30k", "{}", "eval", "retrieval"),
)
_SPLITS = {"iNATURALIST2021": ("train_mini", "val")}

RELEASED: dict[str, FifDataset] = {
    name: FifDataset(name, primer, role, kind, handle, _SPLITS.get(name, ("train", "test")))
    for name, handle, primer, role, kind in _ROWS
}


def read_extra_rows(info_dir: Path) -> dict[str, FifDataset]:
    """Rows for datasets outside the release, from ``<info_dir>/fluxbench_datasets.json`` (a list of objects
    with ``name``, ``primer`` and optionally ``role``, ``kind``, ``captions``); none when the file is absent."""
    path = Path(info_dir) / EXTRA_ROWS_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path} must hold a list of dataset rows, got {type(rows).__name__}")
    out = {}
    for row in rows:
        if not isinstance(row, Mapping) or "name" not in row or "primer" not in row:
            raise DataError(f"{path}: every row needs 'name' and 'primer', got {row!r}")
        out[str(row["name"])] = FifDataset(
            name=str(row["name"]), primer=str(row["primer"]), role=str(row.get("role", "adapt")),
            kind=str(row.get("kind", "classification")), handle=str(row.get("handle", "")),
            captions=str(row.get("captions", "released")),
        )
    return out


class DatasetTable:
    """The released rows plus any extra rows; looks names up exactly, by handle, or case-insensitively
    (the release's own streams and configs spell ``FGVCAircraft``/``FGVCAIRCRAFT``, ``EuroSAT``/``EUROSAT``)."""

    def __init__(self, extra: Mapping[str, FifDataset] | None = None) -> None:
        self.rows: dict[str, FifDataset] = {**RELEASED, **dict(extra or {})}
        self._alias: dict[str, str] = {}
        for row in self.rows.values():
            for key in (row.name, row.handle):
                if key:
                    self._alias[key.lower()] = row.name

    def canonical(self, name: str) -> str | None:
        if name in self.rows:
            return name
        return self._alias.get(name.lower())

    def __getitem__(self, name: str) -> FifDataset:
        canonical = self.canonical(name)
        if canonical is None:
            raise DataError(f"{name!r} is not a FoMo-in-Flux dataset and has no row in {EXTRA_ROWS_FILE}")
        return self.rows[canonical]

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) is not None

    def by_role(self, role: str) -> list[FifDataset]:
        return [row for row in self.rows.values() if row.role == role]
