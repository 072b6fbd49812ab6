"""The corruption engine: the registry contract for every corruption, and fidelity to the reference libraries."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits, load_sample_image

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.corruptions import (
    CORRUPTIONS,
    FROST_FILES,
    FROST_SOURCE,
    HELD_OUT_CORRUPTIONS,
    chunk_seed,
    corrupt,
    corrupt_dataset,
    digital,
    jpeg,
    list_corruptions,
    ops,
)
from fluxbench.streams.corruptions.params import severity_params

# corruptions whose output does not depend on the seed
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}
# where the published tables themselves are not monotone in pixel distance (checked: severity 5 > severity 1)
NOT_MONOTONE = {
    # imagenet: glass sev 2 has 1 shuffle pass after 2; frost sev 4 keeps less image, same frost;
    # snow sev 3 thresholds harder than sev 2; elastic sev 1-2 use a huge sigma and jitter (a near-global warp)
    # saturate (both tables): severities 1-2 remove saturation, 3-5 add it
    "imagenet": {"glass_blur", "frost", "snow", "elastic_transform", "saturate"},  # measured on 224 px
    # cifar: glass blurs more at sev 3 than 4; motion sev 3-4 share sigma; snow sev 5 zooms less;
    # pixelate's BOX sizes at 32 px; elastic's affine jitter shrinks from 2.6 px to 1 px as its warp grows
    # spatter: water drops at severities 1-3, thinner mud at 4
    "cifar": {"glass_blur", "motion_blur", "snow", "frost", "elastic_transform", "pixelate", "saturate", "spatter"},
}
# a grey image as 1 channel or as 3 equal channels gives the same result (same random draws)
CHANNEL_FREE = (set(CORRUPTIONS) | {"gaussian_blur"}) - {"gaussian_noise", "shot_noise", "impulse_noise", "frost",
                                                     "jpeg_compression"}


def natural(size: int, count: int = 2) -> torch.Tensor:
    """scikit-learn's two bundled photos, centre-cropped square and resized to ``size``: (count, 3, size, size)."""
    out = []
    for name in ("china.jpg", "flower.jpg")[:count]:
        photo = load_sample_image(name)
        side = min(photo.shape[:2])
        top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
        square = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(square))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def photos32() -> torch.Tensor:
    return natural(32)


@pytest.fixture(scope="module")
def photo224() -> torch.Tensor:
    return natural(224, count=1)


@pytest.fixture(scope="module")
def digits8() -> torch.Tensor:
    return torch.from_numpy(load_digits().images[:3]).float()[:, None] / 16


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def test_registry_holds_the_15_in_standard_order():
    assert list_corruptions() == list(CORRUPTIONS) + list(HELD_OUT_CORRUPTIONS)
    assert len(CORRUPTIONS) == 15 and CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression"
    assert list_corruptions("*_blur") == ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"]


@pytest.mark.parametrize("name", list_corruptions())
def test_contract_on_32px_photos(name, photos32):
    distances = []
    for severity in range(1, 6):
        out = corrupt(photos32, name, severity, seed=0, params="cifar")
        assert out.shape == photos32.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert (out - photos32).abs().mean() > 1e-3, f"{name} severity {severity} left the image unchanged"
        distances.append(rms(out, photos32))
    if name != "elastic_transform":
        # glass: the generator's swap chain already scrambles a 32 px image hard at severity 1 (delta 1, as at 5)
        assert distances[4] > distances[0] * (1.03 if name == "glass_blur" else 1.1), distances
    again = corrupt(photos32, name, 3, seed=0, params="cifar")
    other = corrupt(photos32, name, 3, seed=1, params="cifar")
    assert torch.equal(again, corrupt(photos32, name, 3, seed=0, params="cifar"))
    assert torch.equal(again, other) == (name in DETERMINISTIC)


@pytest.mark.parametrize("params, fixture", [("imagenet", "photo224"), ("cifar", "photos32")])
@pytest.mark.parametrize("name", list_corruptions())
def test_distance_grows_with_severity(name, params, fixture, request):
    clean = request.getfixturevalue(fixture)
    distances = [rms(corrupt(clean, name, s, seed=0, params=params), clean) for s in range(1, 6)]
    if name == "elastic_transform":
        return  # the jitter of its affine part shrinks with severity: see test_elastic_local_warp_grows_with_severity
    if name in NOT_MONOTONE[params]:
        assert distances[4] > distances[0], distances
    else:
        assert all(b > a for a, b in zip(distances, distances[1:])), distances


def test_elastic_local_warp_grows_with_severity(photo224):
    """ImageNet-C elastic severities 3-5 share sigma and jitter; only the warp strength grows."""
    d = [rms(corrupt(photo224, "elastic_transform", s, seed=0, params="imagenet"), photo224) for s in (3, 4, 5)]
    assert d[0] < d[1] < d[2]


@pytest.mark.parametrize("name", list_corruptions())
def test_8px_digits_grey_and_rgb(name, digits8):
    rgb = digits8.repeat(1, 3, 1, 1)
    for x in (digits8, rgb):
        for severity in (1, 5):
            out = corrupt(x, name, severity, seed=3, params="cifar")
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert (corrupt(x, name, 5, seed=3, params="cifar") - x).abs().mean() > 1e-3
    if name in CHANNEL_FREE:
        grey = corrupt(digits8, name, 4, seed=3, params="cifar")
        colour = corrupt(rgb, name, 4, seed=3, params="cifar")
        assert torch.allclose(colour, grey.expand_as(colour), atol=1e-5)


def test_parameter_tables_are_the_published_ones():
    assert severity_params("gaussian_noise", 5, "imagenet") == 0.38
    assert severity_params("gaussian_noise", 1, "cifar") == 0.04
    assert severity_params("jpeg_compression", 5, "cifar") == 40
    assert severity_params("snow", 5, "imagenet") == (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)
    zooms = severity_params("zoom_blur", 5, "imagenet")
    assert len(zooms) == 11 and zooms[0] == 1.0 and abs(zooms[-1] - 1.30) < 1e-9


@pytest.mark.parametrize("quality", [7, 25, 80])
def test_jpeg_matches_pillow(quality):
    photo = (natural(64, count=1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for image in (photo, photo[:37, :53]):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        reference = np.asarray(Image.open(buffer)).astype(np.float64)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        ours = jpeg.jpeg_roundtrip(x, quality)[0].permute(1, 2, 0).numpy() * 255
        gap = np.abs(ours - reference)
        # libjpeg's integer DCT rounds some coefficients the other way: a level or two on some pixels
        assert gap.mean() < 1.0 and np.mean(gap <= 2) > 0.9, (gap.mean(), np.mean(gap <= 2))
        assert np.abs(reference - image).mean() > 3 * gap.mean()  # the codec's own loss dwarfs the difference


def test_jpeg_quality_tables_follow_libjpeg():
    assert jpeg.quant_table(jpeg.LUMA_TABLE, 50)[0, 0] == 16
    assert jpeg.quant_table(jpeg.LUMA_TABLE, 25)[0, 0] == 32
    assert jpeg.quant_table(jpeg.CHROMA_TABLE, 7).max() == 255  # baseline clamps 99 * 714 / 100
    assert jpeg.quant_table(jpeg.LUMA_TABLE, 100).max() == 1


@pytest.mark.parametrize("size, factor", [(32, 0.65), (32, 0.95), (50, 0.25), (224, 0.6)])
def test_pixelate_matches_pillow_box(size, factor):
    photo = (natural(size, count=1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    small = Image.fromarray(photo).resize((int(size * factor),) * 2, Image.BOX)
    reference = np.asarray(small.resize((size, size), Image.BOX)).astype(np.float64)
    down, up = digital._pixelate_matrices(size, factor, "cpu")
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float()
    ours = (up @ (down @ x @ down.T) @ up.T)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() <= 1.0  # Pillow rounds in 8-bit fixed point


BORDERS = [("nearest", "nearest"), ("symmetric", "reflect"), ("reflect101", "mirror")]


@pytest.mark.parametrize("mode, scipy_mode", BORDERS)
@pytest.mark.parametrize("sigma", [0.7, 2.44, 40.0])
def test_gaussian_filter_matches_scipy(mode, scipy_mode, sigma):
    image = np.random.default_rng(0).random((30, 22))
    reference = ndimage.gaussian_filter(image, sigma, mode=scipy_mode, truncate=3.0)
    ours = ops.gaussian_filter(torch.from_numpy(image)[None, None].float(), sigma, mode, 3.0)[0, 0].numpy()
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("zoom", [1.01, 1.11, 1.31, 2.5])
def test_zoom_matches_scipy_clipped_zoom(zoom):
    image = np.random.default_rng(1).random((40, 40, 3)).astype(np.float32)
    side = int(np.ceil(40 / zoom))
    top = (40 - side) // 2
    big = ndimage.zoom(image[top:top + side, top:top + side], (zoom, zoom, 1), order=1)
    trim = (big.shape[0] - 40) // 2
    reference = big[trim:trim + 40, trim:trim + 40]
    ours = ops.zoom_crop(torch.from_numpy(image).permute(2, 0, 1)[None], zoom)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() < 1e-5


def test_brightness_is_the_hsv_value_shift():
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    image = np.random.default_rng(2).random((16, 16, 3))
    image[0, 0] = 0.0  # black becomes grey
    hsv = rgb_to_hsv(image)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    reference = hsv_to_rgb(hsv)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    ours = corrupt(x, "brightness", 3, seed=0, params="imagenet")[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() < 1e-5


def test_motion_kernel_smears_along_the_angle():
    taps = np.exp(-(np.arange(7) ** 2) / 2.0)
    taps /= taps.sum()
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[0, 0, 8, 10] = 1.0
    right = ops.fft_filter(impulse, ops.motion_kernels(3, 1.0, torch.tensor([0.0]), 16, 16), "nearest")[0, 0]
    assert np.allclose(right[8, 4:11].flip(0).numpy(), taps, atol=1e-6)  # out[y, x] = sum_i tap_i img[y, x + i]
    assert float(right.sum()) == pytest.approx(1.0, abs=1e-5)
    up = ops.fft_filter(impulse, ops.motion_kernels(3, 1.0, torch.tensor([90.0]), 16, 16), "nearest")[0, 0]
    assert np.allclose(up[2:9, 10].flip(0).numpy(), taps, atol=1e-6)


def test_motion_filter_shifts_equal_the_fft_path():
    """The CPU path sums shifted views; GPUs use the FFT of the same kernels: the two must agree."""
    x = torch.rand(3, 2, 20, 17, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([-44.0, 7.5, 100.0])
    for radius, sigma in ((3, 1.0), (12, 8.0)):  # the second runs past the 17 px border
        kernels = ops.motion_kernels(radius, sigma, angles, 20, 17)
        assert torch.allclose(ops.motion_filter(x, radius, sigma, angles), ops.fft_filter(x, kernels, "nearest"),
                              atol=1e-5)


@pytest.mark.parametrize("centred, scipy_mode", [(True, "mirror"), (False, "reflect")])
def test_elastic_sampling_matches_map_coordinates(centred, scipy_mode):
    rng = np.random.default_rng(3)
    image = rng.random((20, 26))
    ys, xs = np.meshgrid(np.arange(20.0), np.arange(26.0), indexing="ij")
    dy, dx = rng.uniform(-6, 6, (2, 20, 26))
    reference = ndimage.map_coordinates(image, (ys + dy, xs + dx), order=1, mode=scipy_mode)
    x = torch.from_numpy(image)[None, None].float()
    ours = digital._sample(x, torch.from_numpy(xs + dx)[None], torch.from_numpy(ys + dy)[None], centred)[0, 0]
    assert np.abs(ours.numpy() - reference).max() < 1e-5


def test_plasma_fractal_is_normalised_and_seeded():
    maps = ops.plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0))
    assert maps.shape == (3, 32, 32)
    assert torch.allclose(maps.amin((1, 2)), torch.zeros(3)) and torch.allclose(maps.amax((1, 2)), torch.ones(3))
    assert not torch.equal(maps[0], maps[1])
    assert torch.equal(maps, ops.plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0)))


def test_frost_reads_the_photos_from_a_folder(tmp_path, photos32):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    for name, colour in zip(FROST_FILES, colours):
        Image.fromarray(np.full((300, 400, 3), colour, dtype=np.uint8)).save(tmp_path / name, quality=100)
    dark = photos32 * 0.5  # nothing clips: out = a * x + b * crop exactly
    out = corrupt(dark, "frost", 2, seed=0, params="cifar", frost_dir=tmp_path)
    image_weight, frost_weight = severity_params("frost", 2, "cifar")
    for sample in out - image_weight * dark:  # each image got one solid photo: b * its colour everywhere
        level = sample.mean((1, 2)).numpy() / frost_weight * 255
        assert min(np.abs(level - np.array(c)).max() for c in colours) < 2
        assert float(sample.std((1, 2)).max()) < 2e-3
    assert not torch.equal(out, corrupt(dark, "frost", 2, seed=0, params="cifar"))  # the procedural bank differs


def test_frost_folder_without_photos_names_them(tmp_path, photos32):
    (tmp_path / FROST_FILES[0]).write_bytes(b"")
    with pytest.raises(DataError, match="frost2.png.*" + FROST_SOURCE.split("//")[1].split("/")[0]):
        corrupt(photos32, "frost", 1, seed=0, params="cifar", frost_dir=tmp_path)


def test_bad_arguments_raise_one_line_errors(photos32):
    for kwargs in ({"name": "fogg"}, {"severity": 0}, {"severity": 6}, {"severity": 2.5}, {"severity": True},
                   {"params": "tiny"}):
        call = {"name": "fog", "severity": 1, "params": "cifar", **kwargs}
        with pytest.raises(ConfigError):
            corrupt(photos32, call["name"], call["severity"], 0, call["params"])
    with pytest.raises(DataError, match="float images"):
        corrupt((photos32 * 255).to(torch.uint8), "fog", 1, 0)
    with pytest.raises(DataError, match="C = 1 or 3"):
        corrupt(photos32[:, :2], "fog", 1, 0)


def test_corrupt_dataset_is_uint8_tagged_and_chunk_seeded():
    digits = load_digits()
    images = np.repeat(np.clip(digits.images[:20] * 16, 0, 255).astype(np.uint8)[..., None], 3, axis=3)
    clean = ImageDataset(images, digits.target[:20], np.array([f"d{i}" for i in range(20)]), "digits")
    out = corrupt_dataset(clean, "gaussian_noise", 4, seed=7, params="cifar", chunk_size=8)
    assert out.images.dtype == np.uint8 and out.images.shape == images.shape
    assert np.array_equal(out.labels, clean.labels) and out.ids[0] == "d0@gaussian_noise/4"
    assert not np.array_equal(out.images, images)
    assert np.array_equal(out.images, corrupt_dataset(clean, "gaussian_noise", 4, seed=7, params="cifar",
                                                      chunk_size=8).images)
    assert not np.array_equal(out.images, corrupt_dataset(clean, "gaussian_noise", 4, seed=8, params="cifar",
                                                          chunk_size=8).images)
    # chunk 1 (images 8..15) can be recomputed alone from its own seed
    x = torch.from_numpy(images[8:16]).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(chunk_seed(7, "gaussian_noise", 4, 1))
    alone = corrupt(x, "gaussian_noise", 4, generator, "cifar")
    assert np.array_equal(out.images[8:16], np.floor(alone.permute(0, 2, 3, 1).numpy() * 255 + 1e-3).astype(np.uint8))


def _glass_chain_reference(image: np.ndarray, delta: int, rng: np.random.RandomState) -> np.ndarray:
    """make_imagenet_c.py's glass-blur loop, restated literally (one pass, one H x W x C image)."""
    x = image.copy()
    size_h, size_w = x.shape[:2]
    for h in range(size_h - delta, delta, -1):
        for w in range(size_w - delta, delta, -1):
            dx, dy = rng.randint(-delta, delta, size=(2,))
            h_prime, w_prime = h + dy, w + dx
            x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime].copy(), x[h, w].copy()
    return x


@pytest.mark.parametrize("delta", [1, 2, 4])
def test_glass_blur_swap_chain_scrambles_as_much_as_the_generator(delta):
    """The chain carries pixels further than one all-at-once shuffle would; the scrambling must match the original's
    (mean absolute change of the image, over many images), not fall short of it."""
    from fluxbench.streams.corruptions.blur import _local_shuffle

    rng = np.random.RandomState(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(24, 3, 52, 52), 5, 1)  # 48 px, locally correlated
    ours = _local_shuffle(smooth, delta, torch.Generator().manual_seed(0))
    theirs = np.stack([_glass_chain_reference(im.permute(1, 2, 0).numpy(), delta, rng) for im in smooth])
    mad_ours = float((ours - smooth).abs().mean())
    mad_theirs = float(np.abs(theirs - smooth.permute(0, 2, 3, 1).numpy()).mean())
    assert mad_ours == pytest.approx(mad_theirs, rel=0.03)
    assert sorted(ours.flatten().tolist()) == pytest.approx(sorted(smooth.flatten().tolist()))  # a permutation
