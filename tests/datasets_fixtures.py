"""Tiny data sets written in their real on-disk formats, for the reader tests.

- CIFAR "python version" batches pickled as Python 2's cPickle wrote them (protocol 2,
  byte strings as BINSTRING, numpy arrays through ``_reconstruct``);
- ImageFolder trees of real JPEGs of varied sizes;
- a CUB-200-2011 tree with its four index files.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` opcodes, like the CIFAR archives."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj: Any, path: Path) -> Path:
    """Write ``obj`` as a Python 2 cPickle (protocol 2) would have."""
    with open(path, "wb") as handle:
        Py2Pickler(handle, protocol=2).dump(obj)
    return path


def cifar_batch(rng: np.random.Generator, labels: list[int], label_key: bytes) -> tuple[dict, np.ndarray]:
    """A CIFAR batch dict with random images for ``labels``; also returns the ``(N, 3072)`` data."""
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"training batch 1 of 1",
        label_key: list(labels),
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return batch, data


def write_cifar100(data_root: Path, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0) -> dict:
    """``data_root/cifar-100-python/{train,test,meta}``; returns the written data and labels per part."""
    rng = np.random.default_rng(seed)
    folder = data_root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [int(c) for c in rng.permutation(np.repeat(np.arange(100), per_class))]
        batch, data = cifar_batch(rng, labels, b"fine_labels")
        batch[b"coarse_labels"] = [c // 5 for c in labels]
        dump_py2(batch, folder / part)
        written[part] = (data, np.array(labels))
    names = [f"class_{c:02d}".encode() for c in range(100)]
    dump_py2({b"fine_label_names": names, b"coarse_label_names": [f"super_{c}".encode() for c in range(20)]},
             folder / "meta")
    return written


def write_cifar10(data_root: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """``data_root/cifar-10-batches-py/`` with five training batches, a test batch and ``batches.meta``."""
    rng = np.random.default_rng(seed)
    folder = data_root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list] = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(c) for c in rng.integers(0, 10, per_batch)]
        labels[:10] = list(range(10))  # every class in every batch
        batch, data = cifar_batch(rng, labels, b"labels")
        dump_py2(batch, folder / name)
        written["test" if name == "test_batch" else "train"].append((data, np.array(labels)))
    names = [n.encode() for n in CIFAR10_NAMES]
    dump_py2({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    return written


def random_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB image (upsampled noise), so JPEG keeps it recognisable."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_photo(rng, *size).save(path, quality=95)
    return path


def write_image_folder(root: Path, counts: dict[str, int], seed: int = 0, ext: str = ".jpg") -> list[Path]:
    """``root/<class>/<class>_<i><ext>`` with ``counts[class]`` JPEGs each, of varied sizes."""
    rng = np.random.default_rng(seed)
    files = []
    for name, count in counts.items():
        for i in range(count):
            size = (int(rng.integers(24, 48)), int(rng.integers(24, 48)))
            files.append(write_jpeg(root / name / f"{name}_{i}{ext}", rng, size))
    return files


def write_cub(data_root: Path, num_classes: int = 4, per_class: int = 4, seed: int = 0) -> Path:
    """A CUB_200_2011 tree: ``per_class`` images per class, every other image a training image."""
    rng = np.random.default_rng(seed)
    root = data_root / "CUB_200_2011"
    images, split, labels, classes = [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for i in range(per_class):
            image_id += 1
            relative = f"{folder}/Bird_{c}_{i:04d}.jpg"
            write_jpeg(root / "images" / relative, rng, (int(rng.integers(30, 50)), int(rng.integers(30, 50))))
            images.append(f"{image_id} {relative}")
            split.append(f"{image_id} {1 if i % 2 == 0 else 0}")
            labels.append(f"{image_id} {c}")
    for name, lines in (("images.txt", images), ("train_test_split.txt", split),
                        ("image_class_labels.txt", labels), ("classes.txt", classes)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root
