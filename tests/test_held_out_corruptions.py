"""The four held-out corruptions: kept out of the standard 15, and faithful to re-statements of the generators.

The registry-wide contract (shapes, ranges, seeds, 8 px digits, severity order) is in test_corruptions.py,
which is parametrized over every registered corruption, these four included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fluxbench.streams.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, corrupt
from fluxbench.streams.corruptions import spatter as sp
from fluxbench.streams.corruptions.params import severity_params


def photos(size: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (blurred noise): edges and flat parts, like photos, at any size."""
    rng = np.random.default_rng(seed)
    noise = rng.random((count, 3, size, size))
    smooth = ndimage.gaussian_filter(noise, (0, 0, size / 16, size / 16))
    return torch.from_numpy(smooth * 2.5 - 0.75).clamp(0, 1).float()


def mean_abs(name: str, x: torch.Tensor, params: str) -> list[float]:
    return [float((corrupt(x, name, s, seed=0, params=params) - x).abs().mean()) for s in range(1, 6)]


def test_held_out_four_are_registered_but_not_standard():
    assert HELD_OUT_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert not set(HELD_OUT_CORRUPTIONS) & set(CORRUPTIONS) and len(CORRUPTIONS) == 15
    assert severity_params("speckle_noise", 5, "imagenet") == 0.6
    assert severity_params("speckle_noise", 1, "cifar") == 0.06
    assert severity_params("gaussian_blur", 5, "imagenet") == 6 and severity_params("gaussian_blur", 5, "cifar") == 1
    assert severity_params("saturate", 5, "imagenet") == (20, 0.2)
    assert severity_params("saturate", 3, "cifar") == (1.5, 0)
    assert severity_params("spatter", 1, "cifar") == (0.62, 0.1, 0.7, 0.7, 0.5, 0)
    assert severity_params("spatter", 5, "imagenet") == (0.67, 0.4, 1, 0.65, 1.5, 1)


@pytest.mark.parametrize("params", ["imagenet", "cifar"])
def test_severity_order_in_mean_absolute_difference(params):
    x = photos(64)
    for name in ("speckle_noise", "gaussian_blur"):
        d = mean_abs(name, x, params)
        assert all(b > a for a, b in zip(d, d[1:])), (name, d)
    d = mean_abs("saturate", x, params)  # 1-2 take saturation away, 3-5 add it: monotone within each
    assert d[0] < d[1] and d[2] < d[3] < d[4], d
    d = mean_abs("spatter", x, params)  # 1-3 water drops, 4-5 mud
    assert d[0] < d[1] < d[2] and d[3] < d[4], d


def test_speckle_is_multiplicative_gaussian_noise():
    x = photos(16)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    ours = corrupt(x, "speckle_noise", 4, seed=7, params="imagenet").numpy()
    reference = np.clip(x.numpy() + x.numpy() * noise.numpy() * 0.45, 0, 1)
    assert np.abs(ours - reference).max() < 1e-6
    assert torch.equal(corrupt(torch.zeros(1, 3, 8, 8), "speckle_noise", 5, seed=0), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("params", ["imagenet", "cifar"])
def test_gaussian_blur_matches_skimage_gaussian(params):
    """skimage's ``gaussian(sigma, multichannel=True)`` is scipy's filter over the two spatial axes, mode nearest."""
    x = photos(40).double()
    for severity in range(1, 6):
        sigma = severity_params("gaussian_blur", severity, params)
        reference = np.clip(ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), mode="nearest", truncate=4), 0, 1)
        ours = corrupt(x.float(), "gaussian_blur", severity, seed=0, params=params).numpy()
        assert np.abs(ours - reference).max() < 1e-5, severity


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv, re-stated: hue 0 where max == min, saturation 0 where max == 0."""
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(v > 0, delta / v, 0.0)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        h = np.where(rgb.argmax(-1) == 0, (g - b) / delta,
                     np.where(rgb.argmax(-1) == 1, 2 + (b - r) / delta, 4 + (r - g) / delta))
    h = np.where(delta > 0, (h / 6) % 1, 0.0)
    return np.stack([h, s, v], -1)


def hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb, re-stated: the six hue sectors."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape)
    for k, channels in enumerate(table):
        out[hi == k] = np.stack(channels, -1)[hi == k]
    return out


@pytest.mark.parametrize("params", ["imagenet", "cifar"])
def test_saturate_matches_the_hsv_formula(params):
    image = np.random.default_rng(3).random((12, 12, 3))
    image[0, 0], image[0, 1], image[0, 2] = 0.0, 0.5, 1.0  # black, grey and white pixels
    image[1, 1] = (0.2, 0.2, 0.7)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    for severity in range(1, 6):
        factor, offset = severity_params("saturate", severity, params)
        hsv = rgb2hsv(image)
        hsv[..., 1] = np.clip(hsv[..., 1] * factor + offset, 0, 1)
        reference = np.clip(hsv2rgb(hsv), 0, 1)
        ours = corrupt(x, "saturate", severity, seed=0, params=params)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - reference).max() < 1e-5, severity


# -- spatter's OpenCV steps, against straightforward NumPy re-statements of OpenCV's algorithms ---------------
def nms_reference(img: np.ndarray, low: float, high: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """OpenCV Canny's gradient (aperture 3, L1) and non-maximum suppression, one pixel at a time."""
    p = np.pad(img.astype(np.int64), 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.pad(np.abs(dx) + np.abs(dy), 1)
    candidate, strong = np.zeros(img.shape, bool), []
    for y, x in np.ndindex(*img.shape):
        m, ax, ay = mag[y + 1, x + 1], abs(dx[y, x]), abs(dy[y, x]) << 15
        if m <= low:
            continue
        if ay < ax * 13573:
            keep = m > mag[y + 1, x] and m >= mag[y + 1, x + 2]
        elif ay > ax * 13573 + (ax << 16):
            keep = m > mag[y, x + 1] and m >= mag[y + 2, x + 1]
        else:
            s = -1 if (dx[y, x] < 0) != (dy[y, x] < 0) else 1
            keep = m > mag[y, x + 1 - s] and m > mag[y + 2, x + 1 + s]
        candidate[y, x] = keep
        if keep and m > high:
            strong.append((y, x))
    return candidate, strong


def canny_reference(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's Canny; hysteresis by a flood fill from the strong pixels through 8-connected candidates."""
    candidate, stack = nms_reference(img, low, high)
    h, w = img.shape
    edges = np.zeros((h, w), bool)
    while stack:
        y, x = stack.pop()
        if edges[y, x]:
            continue
        edges[y, x] = True
        near = candidate[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] & ~edges[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        stack.extend((max(y - 1, 0) + a, max(x - 1, 0) + b) for a, b in zip(*np.nonzero(near)))
    return edges


def chamfer_reference(zero: np.ndarray, limit: float) -> np.ndarray:
    """OpenCV's two-pass 5x5 chamfer scan (a = 1, b = 1.4, c = 2.1969), then truncation."""
    h, w = zero.shape
    d = np.where(zero, 0.0, np.inf)
    forward = [(0, -1, 1.0), (-1, -1, 1.4), (-1, 0, 1.0), (-1, 1, 1.4),
               (-1, -2, 2.1969), (-1, 2, 2.1969), (-2, -1, 2.1969), (-2, 1, 2.1969)]
    for sign, ys, xs in ((1, range(h), range(w)), (-1, range(h - 1, -1, -1), range(w - 1, -1, -1))):
        for y in ys:
            for x in xs:
                for oy, ox, cost in forward:
                    ny, nx = y + sign * oy, x + sign * ox
                    if 0 <= ny < h and 0 <= nx < w:
                        d[y, x] = min(d[y, x], d[ny, nx] + cost)
    return np.minimum(d, limit)


def equalize_reference(img: np.ndarray) -> np.ndarray:
    hist = np.bincount(img.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == img.size:
        return img.copy()
    scale = np.float32(255.0 / (img.size - hist[first]))
    lut = np.zeros(256)
    total = 0
    for j in range(first + 1, 256):
        total += hist[j]
        lut[j] = min(255, np.round(np.float32(total) * scale))
    return lut[img]


def liquid_pixels(size: int, severity: int, seed: int = 0) -> torch.Tensor:
    loc, scale, sigma, threshold, _, _ = severity_params("spatter", severity, "imagenet")
    layer = torch.randn((2, 1, size, size), generator=torch.Generator().manual_seed(seed)) * scale + loc
    layer = sp.gaussian_filter(layer, sigma)
    return torch.floor(torch.where(layer < threshold, 0.0, layer) * 255)


def test_canny_matches_its_restatement():
    for severity, size in ((1, 48), (3, 40)):
        pixels = liquid_pixels(size, severity)
        ours = sp.canny(pixels, 50, 150)
        for i in range(2):
            reference = canny_reference(pixels[i, 0].numpy().astype(np.int64), 50, 150)
            assert reference.any() and np.array_equal(ours[i, 0].numpy(), reference)


def test_chamfer_distance_is_opencvs_two_pass_scan():
    zero = torch.rand(2, 1, 40, 36, generator=torch.Generator().manual_seed(1)) < 0.004
    zero[1, 0, 0, 0] = True  # at least one zero pixel in each image
    ours = sp.chamfer_distance(zero, 20).numpy()
    for i in range(2):
        reference = chamfer_reference(zero[i, 0].numpy(), 20)
        assert np.abs(ours[i, 0] - reference).max() < 1e-4
        exact = np.minimum(ndimage.distance_transform_edt(~zero[i, 0].numpy()), 20)
        assert np.abs(ours[i, 0] - exact).max() < 0.5  # the 5x5 chamfer is within a few percent of Euclid


def test_equalize_hist_matches_opencvs_lut():
    images = torch.randint(0, 21, (3, 1, 16, 16), generator=torch.Generator().manual_seed(2)).float()
    images[2] = 7.0  # one value only: left as it is
    ours = sp.equalize_hist(images).numpy()
    for i in range(3):
        assert np.array_equal(ours[i, 0], equalize_reference(images[i, 0].numpy().astype(np.int64)))


def test_spatter_water_only_adds_and_mud_is_brown():
    x = photos(64, seed=4)
    water = corrupt(x, "spatter", 2, seed=0, params="imagenet")
    assert (water >= x - 1e-6).all() and (water - x).abs().max() > 0.05
    mud = corrupt(x, "spatter", 5, seed=0, params="imagenet")
    changed = (mud - x).abs().amax(1) > 1e-3
    assert changed.any()
    # mud covers a pixel with weight m >= 0.8: at most a fifth of the distance to brown is left
    brown = torch.tensor(sp.MUD).view(1, 3, 1, 1)
    left = (mud - brown).abs().amax(1)[changed] / (x - brown).abs().amax(1)[changed]
    assert left.max() <= 0.2 + 1e-4
    grey = corrupt(x[:, :1], "spatter", 2, seed=0, params="imagenet")
    assert grey.shape == x[:, :1].shape and (grey >= x[:, :1] - 1e-6).all()
