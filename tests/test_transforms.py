"""Batched augmentations: same pixels as torchvision's per-image ops, seeded, and validated configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxbench.benchmarks.base import DataSplit, ImageDataset
from fluxbench.errors import ConfigError
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream
from fluxbench.streams.transforms import (
    Compose,
    HorizontalFlip,
    PadCrop,
    RandomResizedCrop,
    build_batch_transform,
)


def batch(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_no_augment_is_none():
    assert build_batch_transform(None) is None
    assert build_batch_transform({}) is None
    assert build_batch_transform({"horizontal_flip": None, "pad_crop": False}) is None


def test_random_resized_crop_equals_cutting_out_and_resizing_each_image():
    x = batch()
    crop = RandomResizedCrop(size=20, flip=0.5)
    torch.manual_seed(7)
    out = crop(x)
    torch.manual_seed(7)  # replay the same draws: boxes first, then flips
    boxes = crop.boxes(len(x), 20, 20).long().tolist()
    flips = torch.rand(len(x)) < 0.5
    assert 0 < int(flips.sum()) < len(x)
    for i, (top, left, h, w) in enumerate(boxes):
        assert 0 <= top <= 20 - h and 0 <= left <= 20 - w
        expected = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(20, 20), mode="bilinear",
                                 align_corners=False)[0]
        if flips[i]:
            expected = expected.flip(2)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_crop_boxes_follow_scale_and_ratio():
    torch.manual_seed(0)
    boxes = RandomResizedCrop(scale=(0.25, 0.5), ratio=(0.5, 2.0)).boxes(2000, 64, 64)
    area = boxes[:, 2] * boxes[:, 3] / (64 * 64)
    aspect = boxes[:, 3] / boxes[:, 2]
    assert area.min() > 0.2 and area.max() < 0.55 and 0.3 < area.mean() < 0.45
    assert aspect.min() > 0.45 and aspect.max() < 2.2
    assert len(torch.unique(boxes[:, :2], dim=0)) > 300  # positions vary


def test_crop_falls_back_to_the_central_crop_when_nothing_fits():
    torch.manual_seed(0)
    boxes = RandomResizedCrop(scale=(1.0, 1.0), ratio=(2.0, 2.0)).boxes(4, 32, 32)
    # an area of the whole image at 2:1 never fits a square: torchvision's fallback is 32x16, centred
    assert boxes.tolist() == [[8.0, 0.0, 16.0, 32.0]] * 4


def test_output_size_and_uint8_inputs():
    x = (batch(4, 32) * 255).round().to(torch.uint8)
    out = build_batch_transform({"random_resized_crop": {"size": 16, "scale": [0.5, 1.0]}})(x)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.uint8
    full = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    assert torch.equal(full, x)


def test_flip_probability_one_and_zero():
    x = batch()
    assert torch.equal(HorizontalFlip(1.0)(x), x.flip(3))
    assert torch.equal(HorizontalFlip(0.0)(x), x)
    x = batch(32)
    torch.manual_seed(3)
    half = HorizontalFlip(0.5)(x)
    flipped = [bool(torch.equal(half[i], x[i].flip(2))) for i in range(len(x))]
    unchanged = [bool(torch.equal(half[i], x[i])) for i in range(len(x))]
    assert all(a != b for a, b in zip(flipped, unchanged)) and any(flipped) and not all(flipped)


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = batch(8, 12)
    torch.manual_seed(1)
    out = PadCrop(padding=3)(x)
    padded = F.pad(x, [3, 3, 3, 3])
    for i in range(len(x)):
        shifts = [(dy, dx) for dy in range(7) for dx in range(7)]
        windows = [(dy, dx) for dy, dx in shifts if torch.equal(out[i], padded[i, :, dy:dy + 12, dx:dx + 12])]
        assert len(windows) == 1
    assert torch.equal(PadCrop(padding=0)(x), x)
    assert torch.equal(PadCrop(padding=0, flip=1.0)(x), x.flip(3))


def test_flip_folds_into_the_last_crop():
    cifar = build_batch_transform({"horizontal_flip": 0.5, "pad_crop": {"padding": 4}})
    assert cifar == PadCrop(4, flip=0.5)
    imagenet = build_batch_transform({"random_resized_crop": True, "horizontal_flip": True})
    assert imagenet == RandomResizedCrop(None, flip=0.5)
    both = build_batch_transform({"pad_crop": 2, "random_resized_crop": {"scale": [0.5, 1]}, "horizontal_flip": 0.3})
    assert isinstance(both, Compose) and both.steps == (PadCrop(2), RandomResizedCrop(None, (0.5, 1.0), flip=0.3))
    assert build_batch_transform({"horizontal_flip": 0.25}) == HorizontalFlip(0.25)


def test_seeded_and_different_across_seeds():
    transform = build_batch_transform({"random_resized_crop": {"scale": [0.2, 1.0]}, "horizontal_flip": 0.5})
    x = batch()
    torch.manual_seed(5)
    a = transform(x)
    torch.manual_seed(5)
    b = transform(x)
    torch.manual_seed(6)
    c = transform(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("augment, message", [
    ({"colour_jitter": 0.4}, r"unknown augment \['colour_jitter'\]"),
    ({"horizontal_flip": 1.5}, "probability in"),
    ({"pad_crop": {"padding": -1}}, "padding >= 0"),
    ({"random_resized_crop": {"scale": [0.9, 0.1]}}, "scale must satisfy"),
    ({"random_resized_crop": {"ratio": [0.75]}}, "pair"),
    ({"random_resized_crop": {"size": 0}}, "positive integer"),
    ({"random_resized_crop": {"sise": 224}}, "takes"),
    (["horizontal_flip"], "must be a mapping"),
])
def test_bad_augment_configs(augment, message):
    with pytest.raises(ConfigError, match=message):
        build_batch_transform(augment)


def test_transform_reaches_the_training_batches_of_a_stream():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 3)

    def part(name: str) -> ImageDataset:
        return ImageDataset(images, labels, np.array([f"{name}/{i}" for i in range(12)]), name)

    transform = build_batch_transform({"random_resized_crop": {"size": 8}})
    split = DataSplit(part("train"), part("test"), 4)
    stream = class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc2"), [0, 1, 2, 3], "toy", transform)
    torch.manual_seed(0)
    xb, yb = next(stream[0].train_batches(4))
    assert xb.shape == (4, 3, 8, 8) and set(yb.tolist()) <= {0, 1}
    xt, _ = next(stream[0].test_batches(4))
    assert xt.shape == (4, 3, 16, 16)  # test batches are not augmented


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_augmentation_on_cuda():
    transform = build_batch_transform({"pad_crop": 2, "random_resized_crop": {"size": 16}, "horizontal_flip": 0.5})
    x = batch(16, 20)
    torch.manual_seed(11)
    cpu = transform(x)
    torch.manual_seed(11)
    gpu = transform(x.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
