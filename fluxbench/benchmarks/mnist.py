"""MNIST from its idx files, and CIFAR-100 as a listing (both hold pixels, not image files).

MNIST layout (torchvision's ``MNIST/raw/``, or the four files of http://yann.lecun.com/exdb/mnist/ in
``MNIST/``), each file plain or ``.gz``::

    <data_root>/MNIST/raw/{train,t10k}-images-idx3-ubyte   # magic 2051, count, rows, cols, then uint8 pixels
    <data_root>/MNIST/raw/{train,t10k}-labels-idx1-ubyte   # magic 2049, count, then uint8 labels

Class names are torchvision's ("0 - zero" ...), which ZSCL prompts with. Grey images become three channels
when resized to the stream's size (:func:`~fluxbench.benchmarks.listing.resize_arrays`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.cifar import read_cifar100
from fluxbench.benchmarks.listing import Listing, Part, register_listing
from fluxbench.errors import DataError

SOURCE = "http://yann.lecun.com/exdb/mnist/ (or torchvision's mirrors)"
CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
           "8 - eight", "9 - nine")
_MAGIC = {3: 2051, 1: 2049}


def read_idx(folder: Path, stem: str, ndim: int) -> np.ndarray:
    """One idx file (``stem`` or ``stem.gz`` in ``folder``) as a uint8 array of ``ndim`` dimensions."""
    path = folder / stem if (folder / stem).is_file() else folder / f"{stem}.gz"
    if not path.is_file():
        raise DataError(f"{folder / stem} (or .gz) does not exist; expected MNIST's four idx files there "
                        f"(published at {SOURCE})")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _MAGIC[ndim]:
        raise DataError(f"{path} is not an idx{ndim} file (magic {_MAGIC[ndim]}); download it again from {SOURCE}")
    shape = tuple(int.from_bytes(raw[4 * (1 + d):4 * (2 + d)], "big") for d in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {len(raw) - header} bytes; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@register_listing("mnist", image_size=28)
def list_mnist(data_root: Path, folder: str = "MNIST") -> Listing:
    """MNIST: 60,000 train / 10,000 test handwritten digits."""
    root = data_root / folder
    root = root / "raw" if (root / "raw").is_dir() else root
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root, f"{prefix}-images-idx3-ubyte", 3)
        labels = read_idx(root, f"{prefix}-labels-idx1-ubyte", 1).astype(np.int64)
        if len(images) != len(labels) or labels.max(initial=0) > 9:
            raise DataError(f"{root}: {split} has {len(images)} images and {len(labels)} labels in 0..9")
        parts[split] = Part(labels, arrays=images[..., None])
    return Listing("mnist", CLASSES, parts["train"], parts["test"])


def list_cifar100(data_root: Path) -> Listing:
    """CIFAR-100 (the python pickles, read by the ``cifar100`` reader), class names with spaces as ZSCL prompts."""
    split = read_cifar100(data_root)
    names = tuple(n.replace("_", " ") for n in split.train.class_names)
    return Listing("cifar100", names, Part(split.train.labels, arrays=split.train.images),
                   Part(split.test.labels, arrays=split.test.images))
