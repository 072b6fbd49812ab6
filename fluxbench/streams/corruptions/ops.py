"""Batched tensor building blocks shared by the corruptions.

Everything works on ``(B, C, H, W)`` float tensors on any device. Borders follow the
library the original generators call: ``reflect101`` is OpenCV's default (and
``np.pad(mode="reflect")``), ``symmetric`` is scipy.ndimage's ``reflect`` (the edge pixel
repeated), ``nearest`` repeats the edge pixel forever. Paddings are built by index
arithmetic, so a filter wider than the image (an 8x8 digit under a 17x17 disk) works.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

BORDERS = ("reflect101", "symmetric", "nearest")


def border_index(index: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions (any range) onto ``0..n-1`` following border rule ``mode``."""
    if mode == "nearest" or n == 1:
        return index.clamp(0, n - 1)
    if mode == "reflect101":
        period = 2 * n - 2
        index = index.remainder(period)
        return torch.where(index >= n, period - index, index)
    if mode == "symmetric":
        period = 2 * n
        index = index.remainder(period)
        return torch.where(index >= n, period - 1 - index, index)
    raise ValueError(f"unknown border mode {mode!r}")


def pad2d(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by ``ph`` rows and ``pw`` columns on each side."""
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-ph, h + ph, device=x.device), h, mode)
    cols = border_index(torch.arange(-pw, w + pw, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


@lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's Gaussian: radius ``int(truncate * sigma + 0.5)``, weights summing to 1."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def filter_matrix(n: int, kernel: np.ndarray, mode: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``(n, n)`` matrix of a 1-D correlation with ``kernel`` (odd length) under border ``mode``."""
    radius = len(kernel) // 2
    rows = torch.arange(n).repeat_interleave(len(kernel))
    cols = border_index(torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None, :], n, mode).reshape(-1)
    weights = torch.as_tensor(kernel, dtype=torch.float64).repeat(n)
    matrix = torch.zeros(n, n, dtype=torch.float64).index_put_((rows, cols), weights, accumulate=True)
    return matrix.to(device=device, dtype=torch.float32)


@lru_cache(maxsize=64)
def gaussian_matrix(n: int, sigma: float, mode: str, truncate: float, device: str) -> torch.Tensor:
    return filter_matrix(n, gaussian_kernel1d(sigma, truncate), mode, device)


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage/scipy ``gaussian`` over the two spatial dims (``sigma`` 0 is the identity).

    Runs as two products with banded ``(n, n)`` matrices: on CPU several times faster than
    a depthwise convolution, exact for any border rule, and indifferent to the kernel width
    (elastic's sigma of 170 px on a 224 px image).
    """
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    mh = gaussian_matrix(h, float(sigma), mode, float(truncate), str(x.device)).to(x.dtype)
    mw = mh if w == h else gaussian_matrix(w, float(sigma), mode, float(truncate), str(x.device)).to(x.dtype)
    return torch.matmul(torch.matmul(mh, x), mw.T)


def fft_size(n: int) -> int:
    """The smallest size >= ``n`` whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """``cv2.filter2D``-style correlation with a centred odd kernel, by FFT.

    ``kernel`` is ``(kh, kw)`` for the whole batch or ``(B, kh, kw)`` for one kernel per
    image. Cost does not grow with the kernel size (defocus disks, 41-tap motion lines).
    """
    b, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    xp = pad2d(x, kh // 2, kw // 2, mode)
    size = (fft_size(xp.shape[-2]), fft_size(xp.shape[-1]))  # zeros beyond the padding never wrap into the crop
    k = kernel.to(x.dtype).reshape(-1, 1, kh, kw) if kernel.dim() == 3 else kernel.to(x.dtype)
    spectrum = torch.fft.rfft2(xp, s=size) * torch.conj(torch.fft.rfft2(k, s=size))
    return torch.fft.irfft2(spectrum, s=size)[..., :h, :w]


def zoom_crop(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """``clipped_zoom`` of the generators: enlarge the centre by ``zoom``, keep the central H x W.

    scipy's ``zoom(order=1)`` maps output pixel j to input ``j * (n_in - 1) / (n_out - 1)``,
    which is ``interpolate(..., align_corners=True)``.
    """
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = max(int(round(ch * zoom)), h), max(int(round(cw * zoom)), w)
    crop = x[..., top:top + ch, left:left + cw]
    big = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True) if (oh, ow) != (ch, cw) else crop
    trim_h, trim_w = (oh - h) // 2, (ow - w) // 2
    return big[..., trim_h:trim_h + h, trim_w:trim_w + w]


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB->gray weights (0.299, 0.587, 0.114); 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low


def motion_taps(radius: int, sigma: float, angles_deg: torch.Tensor, h: int, w: int):
    """The taps of ``imagecorruptions`` 1.1.2's motion blur, which replaced ImageMagick's ``MotionBlurImage``.

    A one-sided Gaussian line: tap ``i`` (weight ``exp(-i^2 / 2 sigma^2)``, normalised over
    ``2 * radius + 1`` taps) adds the image shifted by ``i`` pixels against ``angle``; edges
    repeat; taps that would leave the image are dropped (without renormalising), as there.
    Returns the weights ``(W,)``, the integer shifts ``dy, dx`` ``(B, W)`` and which taps are kept.
    """
    width = 2 * radius + 1
    taps = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    taps = torch.as_tensor(taps / taps.sum(), dtype=torch.float32, device=angles_deg.device)
    steps = torch.arange(width, device=angles_deg.device, dtype=torch.float64)[None, :]
    rad = torch.deg2rad(angles_deg.double())[:, None]
    dy = -torch.ceil(steps * torch.sin(rad) - 0.5).long()
    dx = -torch.ceil(steps * torch.cos(rad) - 0.5).long()
    inside = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(1).bool()  # the loop stops at the first miss
    return taps, dy, dx, inside


def motion_kernels(radius: int, sigma: float, angles_deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The motion blur of :func:`motion_taps` as one correlation kernel per angle, for :func:`fft_filter`."""
    taps, dy, dx, inside = motion_taps(radius, sigma, angles_deg, h, w)
    width = len(taps)
    size = 2 * (width - 1) + 1
    kernels = torch.zeros(len(angles_deg), size * size, device=angles_deg.device)
    # out[y, x] = sum_i tap_i * img[y - dy_i, x - dx_i]  ->  correlation kernel entry (c - dy_i, c - dx_i)
    flat = (width - 1 - dy) * size + (width - 1 - dx)
    kernels.scatter_add_(1, flat, taps[None, :].expand_as(flat) * inside)
    return kernels.view(-1, size, size)


def motion_filter(x: torch.Tensor, radius: int, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """Motion-blur each image at its own angle: shifted views summed on CPU (2x faster there), FFT on GPUs."""
    h, w = x.shape[-2:]
    if x.device.type != "cpu":
        return fft_filter(x, motion_kernels(radius, sigma, angles_deg, h, w).to(x.dtype), "nearest")
    taps, dy, dx, inside = motion_taps(radius, sigma, angles_deg, h, w)
    pad = len(taps) - 1
    padded = pad2d(x, pad, pad, "nearest")
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for i in np.flatnonzero(inside[b].cpu().numpy()):
            top, left = pad - int(dy[b, i]), pad - int(dx[b, i])
            out[b].add_(padded[b, :, top:top + h, left:left + w], alpha=float(taps[i]))
    return out


def plasma_fractal(batch: int, mapsize: int, wibbledecay: float, generator: torch.Generator) -> torch.Tensor:
    """Diamond-square height maps ``(batch, mapsize, mapsize)`` in [0, 1], as the generators' ``plasma_fractal``."""
    device = generator.device
    grid = torch.zeros(batch, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * uniform(tuple(total.shape), -wibble, wibble, generator)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        grid[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        grid[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    flat = grid.view(batch, -1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / flat.max(1, keepdim=True).values).view(batch, mapsize, mapsize)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


@lru_cache(maxsize=64)
def pil_box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's ``BOX`` resampling as an ``(n_out, n_in)`` matrix (``precompute_coeffs`` in Resample.c)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    for out in range(n_out):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        pos = (np.arange(lo, hi) - center + 0.5) / filterscale
        weights = ((pos > -0.5) & (pos <= 0.5)).astype(np.float64)
        if weights.sum() > 0:
            matrix[out, lo:hi] = weights / weights.sum()
    return matrix
