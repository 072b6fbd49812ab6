"""Applying a corruption: to a batch of tensors, or to a whole :class:`ImageDataset`."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.corruptions.params import PARAM_SETS
from fluxbench.streams.corruptions.registry import get_corruption, get_pixel_path


def _check_setting(severity: int, params: str) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ConfigError(f"corruption severity must be an integer 1..5, got {severity!r}")
    if params not in PARAM_SETS:
        raise ConfigError(f"corruption params must be one of {', '.join(PARAM_SETS)}, got {params!r}")


def _check(images: torch.Tensor, severity: int, params: str) -> None:
    _check_setting(severity, params)
    if not torch.is_floating_point(images) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"corrupt() needs float images (B, C, H, W) with C = 1 or 3, got {images.dtype} "
                        f"{tuple(images.shape)}; use ImageDataset.to_tensors() or corrupt_dataset()")
    if min(images.shape[-2:]) < 2:
        raise DataError(f"corrupt() needs images of at least 2x2 pixels, got {tuple(images.shape[-2:])}")


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int | torch.Generator,
    params: str = "imagenet",
    frost_dir: str | Path | None = None,
) -> torch.Tensor:
    """Corrupt a batch ``(B, C, H, W)`` of floats in [0, 1] with ``name`` at ``severity`` (1..5).

    ``seed`` (an int, or a generator on the images' device) fixes every random draw, so the
    same call gives the same images on the same device type. ``params`` picks the ImageNet-C
    (224 px) or CIFAR-10-C (32 px) table; ``frost_dir`` points frost at the original photos.
    """
    fn = get_corruption(name)
    _check(images, severity, params)
    if isinstance(seed, torch.Generator):
        generator = seed
        if generator.device.type != images.device.type:
            raise ConfigError(f"the generator is on {generator.device}, the images on {images.device}; use one device")
    else:
        generator = torch.Generator(device=images.device).manual_seed(int(seed))
    with torch.no_grad():
        if name == "frost":
            return fn(images, int(severity), generator, params, frost_dir=frost_dir)
        return fn(images, int(severity), generator, params)


def chunk_seed(seed: int, name: str, severity: int, chunk: int) -> int:
    """The seed of one chunk of a dataset: chunks are independent, so any chunk can be recomputed alone."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), int(severity), int(chunk)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` floats in [0, 1] -> ``(B, H, W, C)`` uint8, truncating like the generators' ``np.uint8``.

    Computed channels-last from the start (the cast truncates, which is ``floor`` on these non-negative values),
    so nothing is transposed twice; the array may be a non-contiguous view.
    """
    pix = x.permute(0, 2, 3, 1).clamp(0, 1).mul_(255).add_(1e-3)
    return pix.to(torch.uint8).cpu().numpy()


def to_float(pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, H, W, C)`` uint8 -> contiguous ``(B, C, H, W)`` floats in [0, 1], the layout the corruptions run
    fastest on (a channels-last tensor, what a bare permute gives, makes several of them up to 1.7x slower)."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2)
    return images.contiguous().float().div_(255.0)


def corrupt_pixels(
    pixels: np.ndarray,
    name: str,
    severity: int,
    seed: int | torch.Generator,
    params: str = "imagenet",
    device: torch.device | str = "cpu",
    frost_dir: str | Path | None = None,
) -> np.ndarray:
    """uint8 ``(B, H, W, C)`` in, uint8 out: ``to_uint8(corrupt(to_float(pixels), ...))``.

    On CPU a corruption's pixel path (JPEG, pixelate: see :mod:`.registry`) gives those bytes without the float
    round trip.
    """
    fast = get_pixel_path(name) if torch.device(device).type == "cpu" else None
    if fast is not None and pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[-1] in (1, 3) \
            and min(pixels.shape[1:3]) >= 2:
        _check_setting(severity, params)
        return fast(np.ascontiguousarray(pixels), int(severity), params)
    return to_uint8(corrupt(to_float(pixels, device), name, severity, seed, params, frost_dir))


def corrupt_dataset(
    data: ImageDataset,
    name: str,
    severity: int,
    seed: int,
    params: str = "imagenet",
    chunk_size: int = 256,
    device: torch.device | str = "cpu",
    frost_dir: str | Path | None = None,
) -> ImageDataset:
    """A corrupted copy of ``data`` (uint8, same labels; ids tagged ``<id>@<name>/<severity>``).

    Images are corrupted in chunks of ``chunk_size``, chunk ``k`` seeded by
    :func:`chunk_seed`; the result depends on ``seed`` and ``chunk_size``, not on the device
    memory or on which other chunks were made.
    """
    get_corruption(name)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    out = np.empty(data.images.shape, dtype=np.uint8)  # not np.asarray: a lazy subset would be read whole
    for chunk, start in enumerate(range(0, len(data), chunk_size)):
        part = data.images[start:start + chunk_size]
        generator = torch.Generator(device=device).manual_seed(chunk_seed(seed, name, severity, chunk))
        out[start:start + len(part)] = corrupt_pixels(part, name, severity, generator, params, device, frost_dir)
    ids = np.array([f"{i}@{name}/{severity}" for i in data.ids])
    return ImageDataset(out, np.asarray(data.labels), ids, f"{data.name}/{name}-{severity}", data.class_names)
