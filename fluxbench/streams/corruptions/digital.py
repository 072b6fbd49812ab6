"""Digital corruptions: contrast, elastic transform, pixelate and the held-out saturate (JPEG lives in :mod:`.jpeg`).

Ported from hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py`` (the
generators of the released data; ``imagecorruptions`` re-parameterises elastic, we do
not). Differences: OpenCV's ``warpAffine`` and scipy's ``map_coordinates`` become two
``grid_sample`` calls with the same border rules (reflect-101, then half-sample
symmetric); Pillow's ``BOX`` resampling is reproduced as matrices (``pil_box_matrix``); saturate's
``rgb2hsv``, ``S = clip(a * S + b)``, ``hsv2rgb`` is computed in closed form (hue and value kept, every
channel moved along ``V - S' * (V - x) / S``), which is the same function; a grey pixel has skimage's hue 0
(red), so ``b > 0`` tints it red as there. One channel (no hue): the luma of that RGB result.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from fluxbench.streams.corruptions.apply import to_float, to_uint8
from fluxbench.streams.corruptions.ops import gaussian_filter, pil_box_matrix, to_gray, uniform
from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import register_corruption, register_pixel_path


@register_corruption("contrast")
def contrast(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    factor = severity_params("contrast", severity, params)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * factor + means).clamp_(0, 1)


def _random_affine(b: int, h: int, w: int, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """Inverse maps (B, 3, 3) of the generators' random affine: three points moved by U(-jitter, jitter)."""
    cx, cy, side = w // 2, h // 2, min(h, w) // 3
    src = torch.tensor([[cx + side, cy + side], [cx + side, cy - side], [cx - side, cy - side]],
                       dtype=torch.float64, device=generator.device)
    dst = src + uniform((b, 3, 2), -jitter, jitter, generator).double()
    ones = torch.ones(3, 1, dtype=torch.float64, device=src.device)
    forward = torch.linalg.solve(torch.cat([src, ones], 1), dst).transpose(1, 2)  # (B, 2, 3): dst = M @ [x, y, 1]
    bottom = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64, device=src.device).expand(b, 1, 3)
    return torch.linalg.inv(torch.cat([forward, bottom], 1))


def _sample(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, centred_border: bool) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates; ``centred_border`` reflects about the edge pixels (reflect-101)."""
    h, w = x.shape[-2:]
    if centred_border:
        grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)
    else:
        grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=centred_border)


@register_corruption("elastic_transform")
def elastic_transform(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    alpha, sigma, jitter = severity_params("elastic_transform", severity, params)
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    inverse = _random_affine(b, h, w, jitter, generator).to(x.dtype)
    src = inverse[:, :2, :2] @ torch.stack([xs, ys], 0).view(1, 2, h * w) + inverse[:, :2, 2:]  # (B, 2, H*W)
    x = _sample(x, src[:, 0].view(b, h, w), src[:, 1].view(b, h, w), centred_border=True)
    noise = uniform((2, b, h, w), -1, 1, generator)
    dx, dy = gaussian_filter(noise, sigma, mode="symmetric", truncate=3) * alpha
    return _sample(x, xs + dx, ys + dy, centred_border=False).clamp_(0, 1)


@lru_cache(maxsize=32)
def _pixelate_matrices(n: int, factor: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    small = max(int(n * factor), 1)
    down = torch.as_tensor(pil_box_matrix(n, small), dtype=torch.float32, device=device)
    up = torch.as_tensor(pil_box_matrix(small, n), dtype=torch.float32, device=device)
    return down, up


@register_corruption("pixelate")
def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    factor = severity_params("pixelate", severity, params)
    h, w = x.shape[-2:]
    down_h, up_h = _pixelate_matrices(h, factor, str(x.device))
    down_w, up_w = _pixelate_matrices(w, factor, str(x.device))
    small = torch.matmul(torch.matmul(down_h.to(x.dtype), x), down_w.T.to(x.dtype))
    return torch.matmul(torch.matmul(up_h.to(x.dtype), small), up_w.T.to(x.dtype)).clamp_(0, 1)


@lru_cache(maxsize=32)
def _box_segments(n: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pillow's BOX down- and up-sampling of ``n`` pixels as integer steps, or None where they are not that.

    Down: output j averages the run ``starts[j]`` .. ``starts[j + 1] - 1`` (``counts[j]`` pixels, equal weights);
    up: output i copies small pixel ``picks[i]`` (at an enlargement the box covers one pixel).
    """
    small = max(int(n * factor), 1)
    down, up = pil_box_matrix(n, small), pil_box_matrix(small, n)
    counts = (down > 0).sum(1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    expected = np.zeros_like(down)
    for j, (start, count) in enumerate(zip(starts, counts)):
        expected[j, start:start + count] = 1.0 / count
    picks = up.argmax(1)
    if counts.sum() != n or not np.array_equal(down, expected) or not np.array_equal(up, np.eye(small)[picks]):
        return None
    return starts, counts, picks


@register_pixel_path("pixelate")
def pixelate_pixels(pixels: np.ndarray, severity: int, params: str) -> np.ndarray:
    """uint8 pixelate: the box sums in integers, floor-divided by the box size, which is what the float path's
    ``to_uint8`` gives (its box means are ``k / n`` levels; the truncation keeps the floor)."""
    factor = severity_params("pixelate", severity, params)
    rows, cols = _box_segments(pixels.shape[1], factor), _box_segments(pixels.shape[2], factor)
    if rows is None or cols is None:  # not plain boxes: the float path
        return to_uint8(pixelate(to_float(pixels), severity, None, params))
    sums = np.add.reduceat(np.add.reduceat(pixels, rows[0], axis=1, dtype=np.uint32), cols[0], axis=2)
    sums //= (rows[1][:, None] * cols[1][None, :])[None, :, :, None].astype(np.uint32)
    small = sums.astype(np.uint8)
    return small[:, rows[2]][:, :, cols[2]]


@register_corruption("saturate")
def saturate(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    """Held out: the HSV saturation scaled and shifted, ``S' = clip(a * S + b, 0, 1)``."""
    factor, offset = severity_params("saturate", severity, params)
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    value = rgb.amax(dim=1, keepdim=True)
    spread = value - rgb.amin(dim=1, keepdim=True)
    sat = torch.where(value > 0, spread / value.clamp(min=1e-12), torch.zeros_like(value))
    new_sat = (sat * factor + offset).clamp(0, 1)
    # (V - x) / (V - min) is the channel's place between max and min; grey pixels take hue 0: R = V, G = B = min
    grey_place = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    place = torch.where(spread > 0, (value - rgb) / spread.clamp(min=1e-12), grey_place)
    out = (value - value * new_sat * place).clamp_(0, 1)
    return to_gray(out) if x.shape[1] == 1 else out
