"""Decode a list of image files once into a memory-mapped uint8 cache, then reuse it.

Decoding JPEGs every epoch dominates small-model CL runs. The first read of a file list
decodes every image with PIL, applies the evaluation transform of the pre-trained-model
CL literature (resize the shorter side to ``floor(image_size / crop_pct)``, then centre
crop ``image_size``; PILOT/PyCIL use 256 -> 224 bicubic, i.e. ``crop_pct=0.875``) and
writes a ``(N, S, S, 3)`` ``.npy`` under ``cache_dir("data")``. Later epochs and later
runs memory-map that file. The key hashes the file list, each file's size and mtime,
the target size and the resize rule, so an edited data set or another size gets its own
cache. The file is written under a temporary name and renamed into place, so a crash or
an unreadable image leaves nothing behind.

Training crops need more than the centre crop: torchvision's ``RandomResizedCrop`` samples its box on
the whole original image. :class:`WholeImageRule` caches the whole image resized to a fixed square
(aspect not kept) and :func:`image_sizes` each file's original size, so a box sampled on the original
geometry maps exactly onto the cached square (see :class:`fluxbench.benchmarks.base.CropSource`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fluxbench.cache import cache_dir
from fluxbench.errors import ConfigError, DataError

CACHE_VERSION = 1
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_STATS = {"hits": 0, "misses": 0}


@dataclass(frozen=True)
class ResizeRule:
    """Resize the shorter side to ``floor(image_size / crop_pct)``, then centre-crop ``image_size`` square."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if int(self.image_size) <= 0:
            raise ConfigError(f"image_size must be a positive integer, got {self.image_size!r}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")

    @property
    def resize_to(self) -> int:
        return max(int(self.image_size), math.floor(self.image_size / self.crop_pct))

    def apply(self, image: Image.Image) -> np.ndarray:
        """Same pixels as torchvision's ``Resize(resize_to)`` + ``CenterCrop(image_size)`` on a PIL image."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        target_long = int(self.resize_to * long / short)
        new = (self.resize_to, target_long) if width <= height else (target_long, self.resize_to)
        if new != (width, height):
            image = image.resize(new, INTERPOLATIONS[self.interpolation])
        size = int(self.image_size)
        left = int(round((new[0] - size) / 2.0))
        top = int(round((new[1] - size) / 2.0))
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)

    @property
    def recipe(self) -> list:
        return [int(self.image_size), float(self.crop_pct), self.interpolation]


@dataclass(frozen=True)
class WholeImageRule:
    """Resize the whole image, aspect not kept, to ``image_size`` square: the crop source of training crops.

    The default 256 keeps 256 / 224 of the evaluation resolution along each axis; a larger size keeps small
    crops of large files sharper and costs ``(size / 224) ** 2`` times the evaluation cache's memory.
    """

    image_size: int = 256
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ConfigError(f"crop_source_size must be a positive integer, got {self.image_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")

    @property
    def recipe(self) -> list:
        return ["whole", int(self.image_size), self.interpolation]

    def apply(self, image: Image.Image) -> np.ndarray:
        size = (int(self.image_size), int(self.image_size))
        if image.size != size:
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
        return np.asarray(image, dtype=np.uint8)


Rule = ResizeRule | WholeImageRule
_SIZES_RECIPE = ["sizes"]


@dataclass(frozen=True)
class CachedImages:
    """Decoded images (a copy-on-write memory map: writes never reach the file), its path, and whether it was a hit."""

    images: np.ndarray
    path: Path
    hit: bool


def cache_stats() -> dict[str, int]:
    """How many :func:`decode_images` calls in this process found their cache (hits) or built it (misses)."""
    return dict(_STATS)


def decode_image(path: Path, rule: Rule) -> np.ndarray:
    """One file -> ``(S, S, 3)`` uint8; an unreadable file is a :class:`DataError` naming it."""
    try:
        with Image.open(path) as image:
            return rule.apply(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace or delete the file") from None


def cache_key(files: Sequence[Path], rule: Rule) -> str:
    """Hash of the file list with sizes and mtimes, and the resize rule; a missing file is a :class:`DataError`."""
    return _key(files, rule.recipe)


def _key(files: Sequence[Path], recipe: list) -> str:
    entries = []
    for path in files:
        try:
            stat = os.stat(path)
        except OSError:
            raise DataError(f"image file {path} is listed but cannot be found") from None
        entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    digest = hashlib.blake2b(json.dumps({"version": CACHE_VERSION, "rule": recipe}, sort_keys=True).encode(),
                             digest_size=12)
    digest.update(json.dumps(entries).encode())
    return digest.hexdigest()


def decode_images(
    files: Sequence[str | Path], rule: Rule, name: str = "images", workers: int | None = None
) -> CachedImages:
    """All ``files`` decoded and resized by ``rule``, from the cache when it holds them, else built once."""
    files = [Path(f).resolve() for f in files]
    if not files:
        raise DataError(f"{name}: no image files to read")
    key = cache_key(files, rule)
    path = cache_dir("data") / f"{_safe(name)}-{rule.image_size}px-{key}.npy"
    shape = (len(files), int(rule.image_size), int(rule.image_size), 3)
    cached = _open(path, shape)
    if cached is not None:
        _STATS["hits"] += 1
        return CachedImages(cached, path, hit=True)
    _build(files, rule, path, shape, workers)
    _STATS["misses"] += 1
    return CachedImages(np.load(path, mmap_mode="c"), path, hit=False)


def image_sizes(files: Sequence[str | Path], name: str = "images") -> np.ndarray:
    """``(N, 2)`` int64 original ``(height, width)`` of each file, read from the headers once and cached."""
    files = [Path(f).resolve() for f in files]
    path = cache_dir("data") / f"{_safe(name)}-sizes-{_key(files, _SIZES_RECIPE)}.npy"
    cached = _open(path, (len(files), 2), np.int64)
    if cached is not None:
        return np.asarray(cached)
    sizes = np.empty((len(files), 2), dtype=np.int64)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:  # reads the header only
                sizes[index] = image.size[::-1]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {file}: {err}; replace or delete the file") from None
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        np.save(tmp, sizes)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sizes


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _open(path: Path, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray | None:
    """The cache file as a memory map, or ``None`` when it is absent or not what the key promises."""
    if not path.is_file():
        return None
    try:
        images = np.load(path, mmap_mode="c")
    except (OSError, ValueError):
        images = None
    if images is None or images.shape != shape or images.dtype != dtype:
        path.unlink(missing_ok=True)  # damaged (e.g. disk full when written): rebuild it
        return None
    return images


def _decode_into(tmp: Path, files: list[Path], rule: Rule, shape: tuple[int, ...], workers: int | None) -> None:
    """Fill a fresh ``.npy`` at ``tmp`` with the decoded images, several files at a time."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

    def fill(index: int) -> None:
        out[index] = decode_image(files[index], rule)

    # PIL releases the GIL while decoding and resizing, so threads use every core
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        for _ in pool.map(fill, range(len(files))):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # after a bad file, do not decode the rest
    out.flush()


def _build(files: list[Path], rule: Rule, path: Path, shape: tuple[int, ...], workers: int | None) -> None:
    """Decode into a temporary ``.npy`` beside ``path`` and rename it into place when complete."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _decode_into(tmp, files, rule, shape, workers)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
