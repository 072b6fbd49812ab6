"""Faster corruption code paths give what the paths they replaced gave (kept here, literally, as references)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_sample_image

from fluxbench.streams.corruptions import corrupt, corrupt_pixels, list_corruptions, to_float, to_uint8
from fluxbench.streams.corruptions import spatter as sp
from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import get_pixel_path

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


def pillow_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """imagecorruptions' (and the generators') JPEG: a Pillow save and load."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


@pytest.mark.parametrize("params", ["imagenet", "cifar"])
def test_jpeg_on_cpu_is_pillows_codec_pixel_for_pixel(params, pixels48):
    grey = pixels48[..., :1]
    odd = np.ascontiguousarray(pixels48[:, :37, :45])
    for severity in range(1, 6):
        quality = severity_params("jpeg_compression", severity, params)
        for images in (pixels48, odd, grey):
            ours = to_uint8(corrupt(to_float(images), "jpeg_compression", severity, 0, params))
            theirs = np.stack([pillow_jpeg(image.squeeze(-1) if image.shape[-1] == 1 else image, quality)
                               for image in images]).reshape(images.shape)
            assert np.array_equal(ours, theirs), (severity, images.shape)


def test_jpeg_matches_imagecorruptions_when_installed(pixels48):
    imagecorruptions = pytest.importorskip("imagecorruptions")
    for severity in (1, 5):
        ours = to_uint8(corrupt(to_float(pixels48), "jpeg_compression", severity, 0, "imagenet"))
        theirs = np.stack([imagecorruptions.corrupt(image, corruption_name="jpeg_compression", severity=severity)
                           for image in pixels48])
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["jpeg_compression", "pixelate"])
@pytest.mark.parametrize("params", ["imagenet", "cifar"])
def test_pixel_paths_give_the_float_paths_bytes(name, params, pixels48):
    assert get_pixel_path(name) is not None
    photo = load_sample_image("flower.jpg")
    sets = [pixels48, np.ascontiguousarray(pixels48[:, 3:40, 1:46]), pixels48[..., 1:2].copy(),
            np.stack([photo[:224, :224], photo[200:424, 300:524]]), np.stack([photo[:32, :32], photo[50:82, 9:41]])]
    for severity in range(1, 6):
        for pixels in sets:
            fast = corrupt_pixels(pixels, name, severity, 0, params)
            assert fast.dtype == np.uint8 and fast.shape == pixels.shape
            assert np.array_equal(fast, to_uint8(corrupt(to_float(pixels), name, severity, 0, params)))


def test_pixelate_matches_imagecorruptions_box_then_nearest(pixels48):
    """imagecorruptions' pixelate (BOX down, NEAREST up) rounds its box means where ours truncates: at most a level."""
    for severity in range(1, 6):
        factor = severity_params("pixelate", severity, "imagenet")
        ours = corrupt_pixels(pixels48, "pixelate", severity, 0, "imagenet").astype(int)
        for image, mine in zip(pixels48, ours):
            small = Image.fromarray(image).resize((int(48 * factor),) * 2, Image.BOX)
            theirs = np.asarray(small.resize((48, 48), Image.NEAREST)).astype(int)
            assert np.abs(mine - theirs).max() <= 1 and (mine <= theirs).all()
