"""JPEG compression: libjpeg itself on CPU, baseline JPEG in torch (libjpeg's quality tables, 4:2:0) elsewhere.

The generators round-trip each image through Pillow (``save(..., "JPEG", quality=q)``). On CPU the
images go through the same libjpeg round trip by torchvision's ``encode_jpeg`` / ``decode_jpeg``
(Pillow's defaults: 4:2:0, baseline tables, integer DCT, fancy upsampling), pixel for pixel
Pillow's output and several times faster than the tensor path below, with less per-image
overhead than Pillow's own objects; uint8 datasets skip the float round trip too (``jpeg_pixels``).
On other devices the lossy steps of that codec run batched on tensors: JFIF RGB->YCbCr, chroma
averaged over 2x2, level shift, 8x8 DCT-II, quantisation with the Annex K tables scaled
by libjpeg's ``jpeg_quality_scaling`` (baseline: clamped to 255), then the inverse path
with libjpeg's "fancy" (triangle) chroma upsampling in its integer arithmetic. Entropy coding is lossless, so it is
skipped. Differences from Pillow: float DCT instead of libjpeg's integer ``islow`` DCT and
slightly different rounding, so a few pixels differ by a level or two (tested against
Pillow). One-channel images are coded as grayscale JPEG (luma only).
"""

from __future__ import annotations

import io
import math
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import register_corruption, register_pixel_path

LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]).reshape(8, 8)
CHROMA_TABLE = np.full((8, 8), 99)
CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def quant_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)`` applied to one base table."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """The 2-D orthonormal 8x8 DCT-II as a (64, 64) matrix acting on row-major blocks (JPEG's FDCT)."""
    n = np.arange(8)
    basis = np.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return np.kron(basis, basis)


def _code_plane(plane: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    """Quantise one (N, 1, H, W) plane in 0..255 (H, W multiples of 8) block by block; return the decoded plane."""
    n, _, h, w = plane.shape
    dct = torch.as_tensor(_dct_matrix(), dtype=plane.dtype, device=plane.device)
    step = torch.as_tensor(table.reshape(-1), dtype=plane.dtype, device=plane.device)
    blocks = (plane - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(-1, 64)
    coef = torch.round(blocks @ dct.T / step) * step  # one GEMM for all blocks
    decoded = (coef @ dct).view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, 1, h, w)
    return torch.round(decoded + 128).clamp_(0, 255)


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    return torch.stack([y, cb, cr], 1).round_().clamp_(0, 255)


def _ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136286 * cb - 0.714136286 * cr
    b = y + 1.772 * cb
    return torch.stack([r, g, b], 1).round_().clamp_(0, 255)


def fancy_upsample(plane: torch.Tensor) -> torch.Tensor:
    """libjpeg's ``h2v2_fancy_upsample``: a 3:1 triangle filter in each direction, in its integer arithmetic."""
    above = torch.cat([plane[..., :1, :], plane[..., :-1, :]], -2)
    below = torch.cat([plane[..., 1:, :], plane[..., -1:, :]], -2)
    rows = torch.stack([3 * plane + above, 3 * plane + below], -2).flatten(-3, -2)
    left = torch.cat([rows[..., :1], rows[..., :-1]], -1)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], -1)
    even, odd = torch.floor((3 * rows + left + 8) / 16), torch.floor((3 * rows + right + 7) / 16)
    return torch.stack([even, odd], -1).flatten(-2)


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode ``(B, C, H, W)`` images in [0, 1] (C = 1 or 3) as baseline JPEG at ``quality``."""
    b, c, h, w = x.shape
    # libjpeg pads partial blocks by repeating the last row and column
    pix = F.pad(torch.round(x * 255), (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
    luma_table, chroma_table = quant_table(LUMA_TABLE, quality), quant_table(CHROMA_TABLE, quality)
    if c == 1:
        return (_code_plane(pix, luma_table)[..., :h, :w] / 255).clamp_(0, 1)
    ycc = _rgb_to_ycbcr(pix)
    luma = _code_plane(ycc[:, :1], luma_table)
    chroma = torch.round(F.avg_pool2d(ycc[:, 1:], 2))
    hh, ww = chroma.shape[-2:]
    chroma = _code_plane(chroma.reshape(b * 2, 1, hh, ww), chroma_table).view(b, 2, hh, ww)
    chroma = fancy_upsample(chroma)
    rgb = _ycbcr_to_rgb(torch.cat([luma, chroma], 1))
    return (rgb[..., :h, :w] / 255).clamp_(0, 1)


def codec_pixels(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip uint8 ``(B, H, W, C)`` images through libjpeg at ``quality`` exactly as Pillow's save and load do.

    torchvision's codec (the same libjpeg-turbo defaults) takes channels-last bytes without a copy and skips
    Pillow's per-image objects; where it is missing, Pillow itself.
    """
    try:
        with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec; the pinned version still has it
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

            coded = encode_jpeg([image.permute(2, 0, 1) for image in pixels], quality=int(quality))
            mode = ImageReadMode.GRAY if pixels.shape[-1] == 1 else ImageReadMode.RGB
            return torch.stack([image.permute(1, 2, 0) for image in decode_jpeg(coded, mode=mode)])
    except (ImportError, RuntimeError):
        return torch.from_numpy(np.stack([_pillow_roundtrip(image, quality) for image in pixels.numpy()]))


def _pillow_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer)).reshape(image.shape)


def codec_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode CPU ``(B, C, H, W)`` images in [0, 1] with libjpeg at ``quality``, as Pillow does."""
    b, c, h, w = x.shape
    pix = torch.empty((b, h, w, c), dtype=torch.uint8)  # channels-last bytes: what libjpeg reads
    pix.copy_(torch.round(x.permute(0, 2, 3, 1) * 255).clamp_(0, 255))
    return codec_pixels(pix, quality).permute(0, 3, 1, 2).float().div_(255).contiguous()


@register_pixel_path("jpeg_compression")
def jpeg_pixels(pixels: np.ndarray, severity: int, params: str) -> np.ndarray:
    return codec_pixels(torch.from_numpy(pixels), severity_params("jpeg_compression", severity, params)).numpy()


@register_corruption("jpeg_compression")
def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    quality = severity_params("jpeg_compression", severity, params)
    return codec_roundtrip(x, quality) if x.device.type == "cpu" else jpeg_roundtrip(x, quality)
