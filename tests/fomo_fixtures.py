"""A tiny FoMo-in-Flux tree in the released layout: real JPEGs, real info JSONs, real stream files.

Datasets (a few classes each, 3 train / 2 test images per class):
- DTD: synthetic captions (a list, as most released files), no default caption;
- CIFAR100: with the resized ``CIFAR100_<split>_224`` copies and their info JSONs;
- FSCOCO: retrieval with classes, a default caption per image (a string);
- CIFAR10: evaluation-only; no captions at all (the primed class name is the fallback);
- MSCOCO: evaluation-only retrieval, no classnames JSON, five captions per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {
    "DTD": ["banded", "dotted", "zigzagged"],
    "CIFAR100": ["apple", "bear", "castle", "dolphin"],
    "FSCOCO": ["cow", "zebra"],
    "CIFAR10": ["cat", "dog"],
}
PER_CLASS = {"train": 3, "test": 2}


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def _record(name: str, classname: str, target: int, index: int) -> dict:
    record = {"classname": classname, "target": target, "default_caption": None,
              "primer_caption": None, "synthetic_caption": None, "synthetic_merged_caption": None}
    if name == "DTD":
        record["primer_caption"] = f"A photo of a {classname} texture."
        record["synthetic_caption"] = [f"stripes {index}"]
        record["synthetic_merged_caption"] = [f"A {classname} texture, variant {index}.",
                                              f"The photo depicts a {classname} texture ({index})."]
    elif name == "CIFAR100":
        record["synthetic_merged_caption"] = f"A photo of a {classname}, seen {index}."  # a string, as in AI2D
    elif name == "FSCOCO":
        record["default_caption"] = f"A sketch of a {classname} on grass {index}."
    return record


def write_fif_tree(root: Path, seed: int = 0) -> Path:
    """Write the tree under ``root`` and return ``root``."""
    rng = np.random.default_rng(seed)
    info = root / "data_lib" / "00_info"
    info.mkdir(parents=True)
    (root / "stream_construction").mkdir()
    for name, classes in CLASSES.items():
        (info / f"{name}_classnames.json").write_text(json.dumps(classes))
        for split, count in PER_CLASS.items():
            entries, resized = {}, {}
            for target, classname in enumerate(classes):
                for k in range(count):
                    rel = f"{name.lower()}/images/{classname}/{split}_{k:03d}.jpg"
                    write_jpeg(root / "data" / name / rel, rng)
                    entries[rel] = _record(name, classname, target, k)
                    if name == "CIFAR100":
                        key = f"{name}_{split}_224/{rel}"
                        write_jpeg(root / "data" / name / key, rng, (16, 16))
                        resized[key] = entries[rel]
            (info / f"{name}_{split}.json").write_text(json.dumps(entries, indent=4))
            if resized:
                (info / f"{name}_{split}_224.json").write_text(json.dumps(resized, indent=4))
    coco = {}
    for k in range(4):
        rel = f"images_mscoco_2014_5k_test/COCO_val2014_{k:012d}.jpg"
        write_jpeg(root / "data" / "MSCOCO" / rel, rng)
        coco[rel] = {"classname": None, "target": k, "primer_caption": None, "synthetic_caption": None,
                     "synthetic_merged_caption": None,
                     "default_caption": [f"caption {j} of image {k}" for j in range(5)]}
    (info / "MSCOCO_test.json").write_text(json.dumps(coco, indent=4))
    return root


def adapt_entries() -> list[str]:
    return [f"{n}+++{c}" for n in ("DTD", "CIFAR100", "FSCOCO") for c in CLASSES[n]]
