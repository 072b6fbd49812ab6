"""Tiny CelebA and TinyImageNet trees in their released layouts, for the IBCL binary streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets_fixtures import write_jpeg

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()

# wnid -> words.txt entry; the first four are upstream's first two pairs
TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n09246464": "cliff, drop, drop-off",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n07920052": "espresso",
    "n01774750": "tarantula",
    "n02123045": "tabby, tabby cat",
}


def write_celeba(data_root: Path, partitions: tuple[int, int, int] = (10, 4, 6), seed: int = 0) -> dict:
    """``celeba/`` with ``img_align_celeba/``, ``list_attr_celeba.txt`` and ``list_eval_partition.txt``; returns
    the 0/1 attribute row and the partition of every file."""
    rng = np.random.default_rng(seed)
    root = data_root / "celeba"
    files, rows, parts = [], {}, {}
    for part, count in enumerate(partitions):
        for _ in range(count):
            name = f"{len(files) + 1:06d}.jpg"
            write_jpeg(root / "img_align_celeba" / name, rng, (18, 22))  # CelebA's aspect ratio, 10x smaller
            files.append(name)
            rows[name] = rng.integers(0, 2, len(CELEBA_ATTRIBUTES))
            parts[name] = part
    attr_lines = [str(len(files)), " ".join(CELEBA_ATTRIBUTES) + " "]
    attr_lines += [f"{f} " + " ".join(f"{1 if v else -1:2d}" for v in rows[f]) for f in files]
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {parts[f]}\n" for f in files))
    return {"rows": rows, "partition": parts}


def write_tiny_imagenet(data_root: Path, train_per_class: int = 5, val_per_class: int = 2, seed: int = 0) -> dict:
    """``tiny-imagenet-200/`` with ``wnids.txt``, ``words.txt``, ``train/<wnid>/images`` (and the boxes file) and
    ``val/images`` labelled by ``val_annotations.txt`` (in shuffled order, as released); returns val labels."""
    rng = np.random.default_rng(seed)
    root = data_root / "tiny-imagenet-200"
    root.mkdir(parents=True)
    wnids = list(TINY_WORDS)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # released unsorted
    words = {"n00001740": "entity", **TINY_WORDS}
    (root / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in words.items()))
    for wnid in wnids:
        boxes = []
        for i in range(train_per_class):
            write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, (64, 64))
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    labels = [w for w in wnids for _ in range(val_per_class)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    annotations = {}
    for k, wnid in enumerate(labels):
        write_jpeg(root / "val" / "images" / f"val_{k}.JPEG", rng, (64, 64))
        annotations[f"val_{k}.JPEG"] = wnid
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n"
                                                               for f, w in annotations.items()))
    return {"val": annotations, "wnids": sorted(wnids)}
