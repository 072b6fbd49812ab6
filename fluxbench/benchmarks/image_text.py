"""Image-text pairs from the user's own files: a pretraining pool for continual pretraining (FoMo-in-Flux).

Two on-disk formats, told apart by the path:

- a **folder** of image-caption pairs: every image file (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp``, any
  depth) with its caption in the same-stem ``.txt`` beside it (``a/001.jpg`` + ``a/001.txt``), read in sorted
  path order and decoded through the folder cache (:mod:`.folder_cache`);
- **webdataset shards**: a ``.tar`` or a brace-expanded pattern (``shards/pool-{000..009}.tar``), read in shard
  order through the ``webdataset`` package; a sample is its image member plus ``.txt``. Only raw bytes come out
  of webdataset: images are decoded here with PIL (no webdataset decoder, so no pickle ``.pyd`` handler ever
  runs), and samples without an image or a caption (e.g. ``.json`` only) are skipped, as webdataset loaders do.

``limit`` keeps the first ``limit`` pairs of that order (a webdataset read stops there). A missing path or shard,
an image without caption, an undecodable image or a broken tar is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from fluxbench.benchmarks.folder_cache import ResizeRule, decode_images
from fluxbench.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# the formats PIL may open: the common photo formats only (no EPS, whose decoder calls Ghostscript)
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


@dataclass(frozen=True)
class ImageTextPairs:
    """``images`` (N, S, S, 3) uint8 and one caption per image; ``source`` says where they came from."""

    images: np.ndarray
    captions: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.captions)

    def digest(self) -> str:
        """A hash of the pixels and captions: a changed pool gets its own config hash."""
        h = hashlib.blake2b(np.ascontiguousarray(self.images).data, digest_size=12)
        h.update("\n".join(self.captions).encode())
        return h.hexdigest()


def is_shard_spec(path: str) -> bool:
    return path.endswith(".tar") or ("{" in path and ".." in path)


def shard_paths(spec: str) -> list[Path]:
    """The shards a ``.tar`` path or brace pattern names, each checked to exist (local files only: a ``pipe:`` or
    URL spec never reaches webdataset's opener)."""
    paths = [Path(p).expanduser() for p in braceexpand(spec)]
    for p in paths:
        if not p.is_file():
            raise DataError(f"pretraining pool shard {p} not found; check protocol.pretraining_pool={spec}")
    return paths


def folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, caption file) of every image under ``root``, sorted by path."""
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"pretraining pool folder {root} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for image in images:
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            raise DataError(f"pretraining pool image {image} has no caption file {caption.name} beside it")
        pairs.append((image, caption))
    return pairs


def read_caption(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DataError(f"pretraining pool caption {where} is not UTF-8 text") from None


def decode_bytes(data: bytes, rule: ResizeRule, where: str) -> np.ndarray:
    """One encoded image -> ``(S, S, 3)`` uint8 by ``rule``; a bad one is a DataError naming ``where``."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            return rule.apply(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read pretraining pool image {where}: {err}") from None


def _samples(shard: Path) -> Iterator[dict]:
    import webdataset as wds  # imported here: only shard pools need it

    dataset = wds.WebDataset([str(shard)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                             empty_check=False)
    try:
        yield from dataset
    except (tarfile.TarError, OSError, ValueError) as err:
        raise DataError(f"pretraining pool shard {shard} is not a readable tar: {err.args[0] if err.args else err}; "
                        "replace it") from None


def _image_key(sample: dict) -> str | None:
    return next((k for k in ("jpg", "jpeg", "png", "webp", "bmp") if k in sample), None)


def read_shards(spec: str, rule: ResizeRule, limit: int | None) -> ImageTextPairs:
    images, captions = [], []
    for shard in shard_paths(spec):
        for sample in _samples(shard):
            key = _image_key(sample)
            if key is None or "txt" not in sample:
                continue
            where = f"{shard}:{sample['__key__']}"
            images.append(decode_bytes(sample[key], rule, f"{where}.{key}"))
            captions.append(read_caption(sample["txt"], f"{where}.txt"))
            if limit is not None and len(captions) >= limit:
                return ImageTextPairs(np.stack(images), captions, spec)
    if not captions:
        raise DataError(f"pretraining pool {spec} has no samples with an image (jpg, png, webp, bmp) and a txt "
                        "caption")
    return ImageTextPairs(np.stack(images), captions, spec)


def read_folder(root: Path, rule: ResizeRule, limit: int | None) -> ImageTextPairs:
    pairs = folder_pairs(root)[:limit]
    captions = [read_caption(c.read_bytes(), str(c)) for _, c in pairs]
    images = decode_images([i for i, _ in pairs], rule, name="pretraining_pool").images
    return ImageTextPairs(np.asarray(images), captions, str(root))


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"protocol.pretraining_pool_limit must be a positive integer or null; got {limit!r}")
    return limit


def read_image_text(path: str | os.PathLike, rule: ResizeRule, limit: int | None = None) -> ImageTextPairs:
    """Every pair (the first ``limit``) of a caption folder or webdataset shards, images resized by ``rule``."""
    spec, limit = os.fspath(path), check_limit(limit)
    if is_shard_spec(spec):
        return read_shards(spec, rule, limit)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise DataError(f"pretraining pool {root} not found: give a folder of image + same-stem .txt pairs, a "
                        "webdataset .tar or a shard pattern such as pool-{000..009}.tar")
    return read_folder(root, rule, limit)
