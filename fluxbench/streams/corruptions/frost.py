"""Frost: the image blended with a crop of a frost texture.

Ported from hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py``: pick one of
the texture photos (``randint(5)``, so ``frost6.jpg`` is never used), crop it at a random
place, and return ``clip(a * x + b * crop)``. The CIFAR generator shrinks the photos by
0.2 first; a texture smaller than the image is enlarged (x1.1 margin) as
``imagecorruptions`` does.

Where the textures come from (pick one):

- default: five **procedural** frost textures (a plasma-cloud base, many bright ice
  needles in random directions, a blue-grey tint), generated once per image size from a
  fixed seed, so they act as fixed assets like the photos. This is a documented
  difference: numbers on frost are not comparable with the released ImageNet-C data.
- ``corrupt(..., frost_dir=PATH)``: the original photos ``frost1.png``, ``frost2.png``,
  ``frost3.png``, ``frost4.jpg``, ``frost5.jpg`` from ``ImageNet-C/create_c`` in
  https://github.com/hendrycks/robustness (also shipped inside the ``imagecorruptions``
  wheel, folder ``imagecorruptions/frost``). Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fluxbench.errors import DataError
from fluxbench.streams.corruptions.ops import fft_filter, gaussian_filter, motion_kernels, plasma_fractal
from fluxbench.streams.corruptions.params import FROST_TEXTURE_SCALE, severity_params
from fluxbench.streams.corruptions.registry import register_corruption

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_SOURCE = "https://github.com/hendrycks/robustness/tree/master/ImageNet-C/create_c"
_TEXTURE_SEED = 20190328  # fixed: the procedural textures are part of the corruption's definition
_TINT = (0.80, 0.90, 0.98)


@lru_cache(maxsize=4)
def read_frost_photos(folder: str) -> tuple[torch.Tensor, ...]:
    """The five original frost photos as ``(3, H, W)`` float tensors in [0, 1] (read once per folder)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder).expanduser()
    missing = [name for name in FROST_FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"frost textures {', '.join(missing)} not found in {root}; copy them from {FROST_SOURCE}")
    photos = []
    for name in FROST_FILES:
        try:
            with Image.open(root / name) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"frost texture {root / name} is unreadable ({err}); copy it from {FROST_SOURCE}") from None
        photos.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    return tuple(photos)


def _needles(size: tuple[int, int], scale: float, count: int, density: float, length: float,
             generator: torch.Generator) -> torch.Tensor:
    """``count`` layers of bright streaks: sparse seeds smeared along one random direction per layer."""
    seeds = (torch.rand((count, 1, *size), generator=generator) < density).float()
    seeds *= torch.rand((count, 1, *size), generator=generator) * 0.8 + 0.2
    angles = torch.rand(count, generator=generator) * 360.0
    radius = max(int(round(length * scale)), 1)
    kernels = motion_kernels(radius, max(radius / 2, 0.5), angles, *size) * (radius + 1)
    return fft_filter(seeds, kernels, "reflect101").sum(0, keepdim=True)


@lru_cache(maxsize=16)
def procedural_textures(height: int, width: int, scale: float, count: int = 5) -> torch.Tensor:
    """``count`` frost-like RGB textures ``(count, 3, H', W')`` in [0, 1], larger than ``height x width``.

    Made on the CPU from a fixed seed: the crystal size follows ``scale`` (1 for 224 px
    ImageNet images, 0.2 for 32 px CIFAR ones, like the CIFAR generator's shrunken photos).
    """
    generator = torch.Generator().manual_seed(_TEXTURE_SEED)
    size = (int(height * 1.5) + 2, int(width * 1.5) + 2)
    textures = []
    for _ in range(count):
        side = 1 << max(size[0] - 1, size[1] - 1, 1).bit_length()
        base = plasma_fractal(1, side, 2.0, generator)[:, None, :size[0], :size[1]]
        long = _needles(size, scale, 6, 0.004 / max(scale, 0.05), 30.0, generator)
        short = _needles(size, scale, 6, 0.02 / max(scale, 0.05), 8.0, generator)
        ice = 1 - torch.exp(-(0.9 * long + 0.5 * short))
        gray = gaussian_filter(0.25 + 0.25 * base + 0.55 * ice, 0.6 * scale, "symmetric").clamp(0, 1)
        tint = torch.tensor(_TINT).view(1, 3, 1, 1)
        textures.append((gray * tint + 0.06).clamp(0, 1))
    return torch.cat(textures, 0)


def _fit_photos(photos: tuple[torch.Tensor, ...], height: int, width: int, scale: float) -> torch.Tensor:
    """Scale the photos like the generators and pad them to one stack (crops never reach the padding)."""
    fitted = []
    for photo in photos:
        h, w = (max(int(round(s * scale)), 1) for s in photo.shape[-2:])
        grow = max(1.0, (height + 1) / h, (width + 1) / w)
        if grow > 1.0:
            h, w = int(np.ceil(h * grow * 1.1)), int(np.ceil(w * grow * 1.1))
        mode = "bicubic" if grow > 1.0 else "bilinear"
        fitted.append(F.interpolate(photo[None], size=(h, w), mode=mode, align_corners=False)[0].clamp(0, 1))
    top = max(p.shape[1] for p in fitted), max(p.shape[2] for p in fitted)
    return torch.stack([F.pad(p, (0, top[1] - p.shape[2], 0, top[0] - p.shape[1])) for p in fitted])


@lru_cache(maxsize=16)
def _bank(height: int, width: int, params: str, folder: str | None, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The texture stack on ``device`` and each texture's usable (height, width)."""
    scale = FROST_TEXTURE_SCALE[params]
    if folder is None:
        stack = procedural_textures(height, width, scale)
        sizes = torch.tensor([list(stack.shape[-2:])] * len(stack))
    else:
        photos = read_frost_photos(folder)
        stack = _fit_photos(photos, height, width, scale)
        sizes = torch.tensor([list(_fit_photos((p,), height, width, scale).shape[-2:]) for p in photos])
    return stack.to(device), sizes.to(device)


def frost(
    x: torch.Tensor, severity: int, generator: torch.Generator, params: str, frost_dir: str | Path | None = None
) -> torch.Tensor:
    """Blend with a random crop of a frost texture (procedural, or the photos in ``frost_dir``)."""
    image_weight, frost_weight = severity_params("frost", severity, params)
    b, c, h, w = x.shape
    folder = None if frost_dir is None else str(Path(frost_dir).expanduser().resolve())
    stack, sizes = _bank(h, w, params, folder, str(x.device))
    pick = torch.randint(0, len(stack), (b,), generator=generator, device=x.device)
    room = sizes[pick] - torch.tensor([h, w], device=x.device)
    corner = (torch.rand((b, 2), generator=generator, device=x.device) * room).long()  # randint(0, room)
    rows = (corner[:, 0:1] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (corner[:, 1:2] + torch.arange(w, device=x.device))[:, None, None, :]
    crop = stack[pick[:, None, None, None], torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
    if c == 1:
        weights = torch.tensor([0.2989, 0.5870, 0.1140], device=x.device).view(1, 3, 1, 1)
        crop = (crop * weights).sum(1, keepdim=True)
    return (image_weight * x + frost_weight * crop.to(x.dtype)).clamp_(0, 1)


register_corruption("frost")(frost)
