"""Faster corruption code paths give what the paths they replaced gave (kept here, literally, as references)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fluxbench.streams.corruptions import spatter as sp
from fluxbench.streams.corruptions.params import severity_params

_CHAMFER = [(1.0, ((0, 1), (0, -1), (1, 0), (-1, 0))),
            (1.4, ((1, 1), (1, -1), (-1, 1), (-1, -1))),
            (2.1969, ((1, 2), (1, -2), (-1, 2), (-1, -2), (2, 1), (2, -1), (-2, 1), (-2, -1)))]


def chamfer_before(zero: torch.Tensor, limit: float) -> torch.Tensor:
    """spatter.chamfer_distance before it shared the neighbour minima: 16 shifted views, one add each."""
    h, w = zero.shape[-2:]
    dist = torch.where(zero, 0.0, float(limit)).to(torch.float32)
    for _ in range(int(limit) + 1):
        padded = F.pad(dist, (2, 2, 2, 2), value=float(limit))
        best = dist.clone()
        for step, offsets in _CHAMFER:
            for oy, ox in offsets:
                torch.minimum(best, padded[..., 2 + oy:2 + oy + h, 2 + ox:2 + ox + w] + step, out=best)
        if torch.equal(best, dist):
            break
        dist = best
    return dist


def liquid_edges(size: int, severity: int, count: int = 3, seed: int = 0) -> torch.Tensor:
    """The Canny edges of spatter's water layer, as the corruption makes them."""
    loc, scale, sigma, threshold, _, _ = severity_params("spatter", severity, "imagenet")
    layer = torch.randn((count, 1, size, size), generator=torch.Generator().manual_seed(seed)) * scale + loc
    layer = sp.gaussian_filter(layer, sigma)
    return sp.canny(torch.floor(torch.where(layer < threshold, 0.0, layer) * 255), 50, 150)


def test_chamfer_distance_equals_the_16_view_relaxation():
    for severity, size in ((1, 224), (2, 96), (3, 64)):
        zero = liquid_edges(size, severity)
        assert zero.any()
        assert torch.equal(sp.chamfer_distance(zero, 20), chamfer_before(zero, 20))
    sparse = torch.rand(2, 1, 50, 37, generator=torch.Generator().manual_seed(1)) < 0.002
    assert torch.equal(sp.chamfer_distance(sparse, 20), chamfer_before(sparse, 20))


def hysteresis_before(candidate: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """spatter's hysteresis before scipy's labelling on CPU: 3x3 dilations of the strong pixels until stable."""
    edges = strong
    while True:
        grown = edges
        for _ in range(4):
            grown = candidate & sp.dilate3(grown)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def test_hysteresis_by_labelling_equals_the_dilation_loop():
    for severity, size in ((1, 224), (2, 96), (3, 64)):
        loc, scale, sigma, threshold, _, _ = severity_params("spatter", severity, "imagenet")
        layer = torch.randn((3, 1, size, size), generator=torch.Generator().manual_seed(severity)) * scale + loc
        layer = sp.gaussian_filter(layer, sigma)
        candidate, strong = sp.canny_peaks(torch.floor(torch.where(layer < threshold, 0.0, layer) * 255), 50, 150)
        assert strong.any() and (candidate & ~strong).any()
        assert torch.equal(sp.hysteresis(candidate, strong), hysteresis_before(candidate, strong))
    # a weak chain touching the image border and a strong pixel of the next image: no link across images
    candidate = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    candidate[0, 0, 5, :] = True
    candidate[1, 0, 0, :] = True
    strong = torch.zeros_like(candidate)
    strong[1, 0, 0, 0] = True
    assert torch.equal(sp.hysteresis(candidate, strong), hysteresis_before(candidate, strong))
    assert not sp.hysteresis(candidate, strong)[0].any()
