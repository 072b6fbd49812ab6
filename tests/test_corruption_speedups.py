"""Faster corruption code paths give what the paths they replaced gave (kept here, literally, as references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image

from fluxbench.streams.corruptions import corrupt, list_corruptions, to_float, to_uint8
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


@pytest.fixture(scope="module")
def pixels48() -> np.ndarray:
    photo = load_sample_image("china.jpg")
    return np.stack([photo[100:148, 200:248], photo[300:348, 40:88], photo[10:58, 500:548]])


def test_to_uint8_equals_the_floor_it_replaced():
    x = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 254.5 / 255, 3 / 255])
    before = torch.floor(x.clamp(0, 1) * 255 + 1e-3).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    assert np.array_equal(to_uint8(x), before)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_float(pixels)), pixels) and to_float(pixels).is_contiguous()


@pytest.mark.parametrize("name", list_corruptions())
def test_layout_does_not_change_the_images(name, pixels48):
    """to_float gives contiguous tensors where a bare permute gives channels-last ones: same uint8 images."""
    channels_last = torch.from_numpy(pixels48).permute(0, 3, 1, 2).float().div_(255)
    for severity in (1, 5):
        ours = to_uint8(corrupt(to_float(pixels48), name, severity, 0, "imagenet"))
        assert np.array_equal(ours, to_uint8(corrupt(channels_last, name, severity, 0, "imagenet")))
