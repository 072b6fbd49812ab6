"""Spatter (held out): water drops (severities 1-3 of both tables) or mud (4-5) over the image.

Ported from hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py``. A liquid layer
``N(loc, scale)`` (one per image) is blurred (skimage ``gaussian``) and zeroed below a threshold. Mud: the
drop mask, blurred, kept where it is at least 0.8, blends the image towards brown (63, 42, 20). Water: the
layer's edges (OpenCV ``Canny(50, 150)``), the distance to them (``distanceTransform(DIST_L2, 5)``)
truncated at 20, a 3x3 box blur cast to uint8, ``equalizeHist``, an emboss kernel (``filter2D`` to uint8)
and a second box blur give a relief map; the layer times it, scaled to a maximum of ``intensity``, adds
pale turquoise (175, 238, 238).

The OpenCV steps are re-stated in torch, batched, with OpenCV's border rules (Sobel on replicated edges,
the box and emboss filters on reflect-101) and uint8 roundings. Differences:

- Canny: the same 3x3 Sobel, L1 magnitude, fixed-point direction sectors (tan 22.5 degrees in Q15),
  non-maximum comparisons and 8-connected hysteresis (on CPU by scipy's connected-component labelling);
  the edge map should be OpenCV's, but it is checked here only against a NumPy re-statement, not against
  OpenCV itself.
- the distance transform is OpenCV's 5x5 chamfer metric (steps 1, 1.4 and 2.1969) computed by
  repeated relaxation instead of two raster scans (the same distances, without OpenCV's fixed-point
  rounding), truncated at 20 as the original then does.
- numpy's ``astype(uint8)`` of a layer value above 1 wraps around; here it saturates at 255 (such values
  are rare: the blurred layer seldom exceeds 1).
- a layer with no drop at all makes the original divide by zero (a NaN image); here the image is kept.
- one channel: the colours are their luma (OpenCV weights).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fluxbench.streams.corruptions.ops import gaussian_filter, pad2d, to_gray
from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import register_corruption

WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)
_TG22 = int(0.4142135623730950488 * (1 << 15) + 0.5)  # OpenCV Canny's tan(22.5 deg) in Q15
_CHAMFER = [(1.0, ((0, 1), (0, -1), (1, 0), (-1, 0))),
            (1.4, ((1, 1), (1, -1), (-1, 1), (-1, -1))),
            (2.1969, ((1, 2), (1, -2), (-1, 2), (-1, -2), (2, 1), (2, -1), (-2, 1), (-2, -1)))]
_EIGHT_CONNECTED = np.zeros((3, 3, 3, 3), dtype=bool)  # 8 neighbours within an image of (B, 1, H, W), never across
_EIGHT_CONNECTED[1, 1] = True
_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))


def _shifted(padded: torch.Tensor, dy: int, dx: int, h: int, w: int, pad: int = 1) -> torch.Tensor:
    """The view of a ``pad``-padded map whose pixel (y, x) is the original's (y + dy, x + dx)."""
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def correlate3(x: torch.Tensor, kernel: tuple[tuple[float, ...], ...], border: str) -> torch.Tensor:
    """``cv2.filter2D``-style 3x3 correlation (exact sums: the inputs are small integers)."""
    h, w = x.shape[-2:]
    padded = pad2d(x, 1, 1, border)
    out = torch.zeros_like(x)
    for i, row in enumerate(kernel):
        for j, weight in enumerate(row):
            if weight:
                out += weight * _shifted(padded, i - 1, j - 1, h, w)
    return out


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV's ``Canny(image, low, high)`` (aperture 3, L1 gradient) on integer-valued ``(B, 1, H, W)``: edges."""
    candidate, strong = canny_peaks(image, low, high)
    return hysteresis(candidate, strong)


def canny_peaks(image: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Canny's non-maximum suppression: the candidate edge pixels (above ``low``) and the strong ones."""
    dx = correlate3(image, ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)), "nearest")
    dy = correlate3(image, ((-1, -2, -1), (0, 0, 0), (1, 2, 1)), "nearest")
    mag = dx.abs() + dy.abs()
    h, w = mag.shape[-2:]
    around = F.pad(mag, (1, 1, 1, 1))  # OpenCV compares border pixels with zeros

    def at(oy: int, ox: int) -> torch.Tensor:
        return _shifted(around, oy, ox, h, w)

    ax, ay = dx.abs(), dy.abs() * (1 << 15)
    tg22 = ax * _TG22
    tg67 = tg22 + ax * (1 << 16)
    same_sign = (dx < 0) == (dy < 0)
    horizontal = (mag > at(0, -1)) & (mag >= at(0, 1))
    vertical = (mag > at(-1, 0)) & (mag >= at(1, 0))
    diagonal = torch.where(same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    peak = torch.where(ay < tg22, horizontal, torch.where(ay > tg67, vertical, diagonal))
    candidate = peak & (mag > low)
    return candidate, candidate & (mag > high)


def hysteresis(candidate: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The candidates 8-connected to a strong pixel, per image of ``(B, 1, H, W)`` masks.

    On CPU by scipy's connected-component labelling (one pass); elsewhere by growing the strong pixels through
    the candidates until nothing changes. Both are that set exactly.
    """
    if candidate.device.type == "cpu":
        labels, count = ndimage.label(candidate.numpy(), structure=_EIGHT_CONNECTED)
        reached = np.zeros(count + 1, dtype=bool)
        reached[labels[strong.numpy()]] = True
        reached[0] = False
        return torch.from_numpy(reached[labels])
    edges = strong
    while True:
        grown = edges
        for _ in range(4):
            grown = candidate & dilate3(grown)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def dilate3(mask: torch.Tensor) -> torch.Tensor:
    """A 3x3 binary dilation as row then column ORs (several times faster than ``max_pool2d`` on CPU)."""
    padded = F.pad(mask.to(torch.uint8), (1, 1, 1, 1))
    rows = padded[..., :-2, :] | padded[..., 1:-1, :] | padded[..., 2:, :]
    return (rows[..., :-2] | rows[..., 1:-1] | rows[..., 2:]).bool()


def chamfer_distance(zero: torch.Tensor, limit: float) -> torch.Tensor:
    """``distanceTransform(DIST_L2, 5)`` to the ``zero`` pixels, truncated at ``limit``.

    Every other pixel starts at ``limit`` (as if a zero pixel lay that far away), so the relaxation gives
    ``min(distance, limit)`` and stops as soon as nothing changes: a few rounds where edges are dense.
    Each round takes the minimum over the 16 neighbours of the 5x5 mask, shared between offsets (row pairs
    first, then columns) and adding each step once per group: float addition is monotone, so
    ``min(a, b) + s == min(a + s, b + s)`` and the distances are those of one add per neighbour.
    """
    h, w = zero.shape[-2:]
    dist = torch.where(zero, 0.0, float(limit)).to(torch.float32)
    for _ in range(int(limit) + 1):
        p = F.pad(dist, (2, 2, 2, 2), value=float(limit))  # outside the image is not a zero pixel
        centre_rows = p[..., 2:2 + h, :]
        axial = torch.minimum(centre_rows[..., 1:1 + w], centre_rows[..., 3:3 + w])  # (0, -1), (0, 1)
        rows1 = torch.minimum(p[..., 1:1 + h, :], p[..., 3:3 + h, :])  # dy = -1 or 1, every column
        torch.minimum(axial, rows1[..., 2:2 + w], out=axial)  # (-1, 0), (1, 0)
        diagonal = torch.minimum(rows1[..., 1:1 + w], rows1[..., 3:3 + w])  # (+-1, +-1)
        knight = torch.minimum(rows1[..., 0:w], rows1[..., 4:4 + w])  # (+-1, +-2)
        rows2 = torch.minimum(p[..., 0:h, :], p[..., 4:4 + h, :])  # dy = -2 or 2
        torch.minimum(knight, torch.minimum(rows2[..., 1:1 + w], rows2[..., 3:3 + w]), out=knight)  # (+-2, +-1)
        best = torch.minimum(dist, axial.add_(_CHAMFER[0][0]))
        torch.minimum(best, diagonal.add_(_CHAMFER[1][0]), out=best)
        torch.minimum(best, knight.add_(_CHAMFER[2][0]), out=best)
        if torch.equal(best, dist):
            break
        dist = best
    return dist


def equalize_hist(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``equalizeHist`` per image, on integer-valued ``(B, 1, H, W)`` in 0..255."""
    b = image.shape[0]
    values = image.reshape(b, -1).long()
    hist = torch.zeros(b, 256, dtype=torch.long, device=image.device).scatter_add_(1, values, torch.ones_like(values))
    first = (hist > 0).int().argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    total = values.shape[1]
    scale = 255.0 / (total - first_count).clamp(min=1).to(torch.float32)
    lut = torch.round((hist.cumsum(1) - first_count).to(torch.float32) * scale).clamp_(0, 255)
    lut = torch.where(torch.arange(256, device=image.device) <= first, 0.0, lut)
    lut = torch.where(first_count == total, first.to(lut.dtype).expand_as(lut), lut)  # one value: kept as it is
    return lut.gather(1, values).view_as(image).to(image.dtype)


def _colour(rgb: tuple[float, float, float], x: torch.Tensor) -> torch.Tensor:
    colour = torch.tensor(rgb, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return to_gray(colour) if x.shape[1] == 1 else colour


def water(x: torch.Tensor, layer: torch.Tensor, intensity: float) -> torch.Tensor:
    pixels = torch.floor(layer * 255).clamp_(0, 255)  # (layer * 255).astype(uint8)
    dist = chamfer_distance(canny(pixels, 50, 150), 20)  # threshold(20, THRESH_TRUNC) included
    dist = torch.floor(correlate3(dist, ((1, 1, 1),) * 3, "reflect101") / 9 + 1e-4)  # blur, then astype(uint8)
    dist = equalize_hist(dist)
    dist = correlate3(dist, _EMBOSS, "reflect101").clamp_(0, 255)  # filter2D to CV_8U saturates
    dist = torch.round(correlate3(dist, ((1, 1, 1),) * 3, "reflect101") / 9)  # a uint8 blur rounds
    m = pixels * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp(min=1e-12), 0.0) * intensity
    return (x + m * _colour(WATER, x)).clamp_(0, 1)


def mud(x: torch.Tensor, layer: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    m = gaussian_filter((layer > threshold).to(x.dtype), sigma)
    m = torch.where(m < 0.8, 0.0, m)
    return (x * (1 - m) + _colour(MUD, x) * m).clamp_(0, 1)


@register_corruption("spatter")
def spatter(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    loc, scale, sigma, threshold, strength, is_mud = severity_params("spatter", severity, params)
    b, _, h, w = x.shape
    layer = torch.randn((b, 1, h, w), generator=generator, device=x.device, dtype=x.dtype) * scale + loc
    layer = gaussian_filter(layer, sigma)
    layer = torch.where(layer < threshold, 0.0, layer)
    return mud(x, layer, threshold, strength) if is_mud else water(x, layer, strength)
