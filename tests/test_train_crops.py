"""Training crops on the whole image's geometry, PILOT's split lists, lazy memory-mapped subsets, the device copy."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets_fixtures import random_photo, write_image_folder
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from fluxbench.batching import to_device
from fluxbench.benchmarks import imagefolder  # noqa: F401  (registers the readers)
from fluxbench.benchmarks.base import DataSplit, ImageDataset, RowView
from fluxbench.benchmarks.registry import load_dataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.protocols.execution import SupervisedLoop, data_split_tags
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream
from fluxbench.streams.transforms import RandomResizedCrop, build_batch_transform

RED = (255, 0, 0)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FLUXBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def banded(width: int = 96, height: int = 48, band: int = 16) -> Image.Image:
    """Grey with pure red left and right bands that the centre crop of the shorter side never shows."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[:, :band] = RED
    pixels[:, -band:] = RED
    return Image.fromarray(pixels)


def banded_root(tmp_path: Path, copies: int = 3) -> Path:
    for wnid in ("n01", "n02"):
        for i in range(copies):
            path = tmp_path / "data" / "imagenet-r" / wnid / f"{wnid}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            banded().save(path)  # PNG: exact colours
    return tmp_path / "data"


def read(data_root: Path, **options):
    return load_dataset({"dataset": "imagenet_r", "image_size": 16, "crop_pct": 1.0, **options}, data_root)


def red(x: torch.Tensor) -> torch.Tensor:
    """Per pixel of float ``(N, 3, H, W)`` batches: is it (nearly) pure red?"""
    return (x[:, 0] > 0.85) & (x[:, 1] < 0.15) & (x[:, 2] < 0.15)


def first_experience(split, augment: dict):
    stream = class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc2"), [0, 1], "toy",
                                      build_batch_transform(augment))
    return stream[0]


def test_crops_cover_the_whole_image_not_the_centre_view(tmp_path):
    split = read(banded_root(tmp_path), crop_source_size=32)
    assert split.train.crops is not None and split.test.crops is None
    assert split.train.crops.images.shape == (len(split.train), 32, 32, 3)
    assert split.train.crops.sizes.tolist() == [[48, 96]] * len(split.train)
    assert not red(torch.from_numpy(np.asarray(split.train.images)).permute(0, 3, 1, 2) / 255.0).any()
    # scale 1 at aspect 2: torchvision's box on the 96x48 file is the whole image, bands included
    exp = first_experience(split, {"random_resized_crop": {"scale": [1.0, 1.0], "ratio": [2.0, 2.0]}})
    torch.manual_seed(0)
    xb, _ = next(exp.train_batches(8))
    assert xb.shape == (len(exp.train), 3, 16, 16) and xb.dtype == torch.float32
    assert red(xb)[:, :, [0, -1]].all() and not red(xb)[:, :, 6:10].any()
    # the evaluation view is unchanged, and statistics on clean images still see it
    x_clean, _ = next(exp.train_batches(8, shuffle=False, augment=False))
    centre = torch.from_numpy(np.asarray(exp.train.images)).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(x_clean, centre)


def test_train_crops_centre_is_the_old_behaviour(tmp_path):
    split = read(banded_root(tmp_path), train_crops="centre")
    assert split.train.crops is None
    exp = first_experience(split, {"random_resized_crop": {"scale": [0.08, 1.0]}, "horizontal_flip": 0.5})
    torch.manual_seed(0)
    assert not any(red(xb).any() for _ in range(5) for xb, _ in exp.train_batches(4))
    with pytest.raises(ConfigError, match="train_crops must be one of full, centre"):
        read(banded_root(tmp_path), train_crops="center")


def test_crop_equals_torchvision_on_the_file_up_to_the_cache_resolution(tmp_path):
    root = tmp_path / "data" / "imagenet-r"
    originals = []
    for i, size in enumerate([(96, 64), (60, 90), (80, 80)]):
        path = root / "n01" / f"a_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        random_photo(np.random.default_rng(i), *size).save(path)
        originals.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1))
    split = read(tmp_path / "data", crop_source_size=96)
    source = torch.from_numpy(np.asarray(split.train.crops.images)).permute(0, 3, 1, 2)
    sizes = torch.from_numpy(split.train.crops.sizes)
    crop = RandomResizedCrop(size=16, scale=(0.2, 1.0))
    torch.manual_seed(3)
    out = crop(source, sizes=sizes)
    torch.manual_seed(3)  # replay: the boxes torchvision would draw on each file's own size
    boxes = crop.boxes(len(source), sizes[:, 0], sizes[:, 1]).long().tolist()
    names = [Path(i).name for i in split.train.ids]
    for k, (top, left, h, w) in enumerate(boxes):
        reference = TF.resized_crop(originals[int(names[k][2])], top, left, h, w, [16, 16], antialias=True)
        assert (out[k].float() - reference.float()).abs().mean() < 6  # of 255: the same region, resampled twice


def test_uint8_cpu_crops_equal_torchvision_resized_crop_and_are_seeded():
    x = torch.randint(0, 256, (6, 3, 40, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    crop = RandomResizedCrop(size=24, scale=(0.1, 1.0), flip=0.5)
    torch.manual_seed(7)
    out = crop(x)
    torch.manual_seed(7)
    boxes = crop.boxes(len(x), 40, 30).long().tolist()
    flips = torch.rand(len(x)) < 0.5
    for i, (top, left, h, w) in enumerate(boxes):
        expected = TF.resized_crop(x[i], top, left, h, w, [24, 24], antialias=True)
        assert torch.equal(out[i], expected.flip(2) if flips[i] else expected)
    torch.manual_seed(7)
    assert torch.equal(crop(x), out)


def test_uint8_cpu_crops_are_the_same_for_any_thread_count_and_come_out_channels_last():
    x = torch.randint(0, 256, (9, 40, 30, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    x = x.permute(0, 3, 1, 2)  # the cache's layout
    crop = RandomResizedCrop(size=24, flip=0.5)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.manual_seed(3)
            outs.append(crop(x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(out, outs[0]) for out in outs[1:])
    assert outs[0].is_contiguous(memory_format=torch.channels_last) and torch.get_num_threads() == before


def test_grid_path_and_per_image_path_agree_on_enlarged_crops():
    coarse = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 255
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear").round().to(torch.uint8)  # smooth
    sizes = torch.tensor([[48, 96]] * 4 + [[90, 30]] * 4)
    crop = RandomResizedCrop(size=40, scale=(0.3, 1.0), flip=0.5)
    torch.manual_seed(5)
    per_image = crop(x, sizes=sizes).float()
    torch.manual_seed(5)
    grid = crop(x.float(), sizes=sizes)  # the GPU path, here on the CPU
    assert (per_image - grid).abs().mean() < 4  # same boxes and flips; rounding to source pixels differs


def test_pilot_split_lists_are_honoured_and_tagged(tmp_path):
    root = tmp_path / "data" / "imagenet-r"
    write_image_folder(root, {"n02": 3, "n01": 4})
    assert read(tmp_path / "data").data_split == "seeded_80_20"
    (root / "train.txt").write_text("n01/n01_1.jpg 0\nn01/n01_2.jpg 0\nn01/n01_3.jpg 0\nn02/n02_0.jpg 1\n\n"
                                    "n02/n02_2.jpg 1\n")
    (root / "test.txt").write_text("n01/n01_0.jpg 0\nn02/n02_1.jpg 1\n")
    split = read(tmp_path / "data")
    assert split.data_split == "pilot_released" and split.train.class_names == ("n01", "n02")
    assert split.test.ids.tolist() == ["imagenet_r/n01/n01_0.jpg", "imagenet_r/n02/n02_1.jpg"]
    assert split.train.labels.tolist() == [0, 0, 0, 1, 1] and split.test.labels.tolist() == [0, 1]
    assert read(tmp_path / "data", classes=[1]).data_split == "pilot_released"
    (root / "test.txt").write_text("n01/n01_9.jpg 0\n")
    with pytest.raises(DataError, match=r"test.txt, line 1: .*n01_9.jpg does not exist"):
        read(tmp_path / "data")


def test_released_tree_is_tagged_and_the_tag_reaches_the_runs(tmp_path):
    root = tmp_path / "data" / "imagenet-r"
    write_image_folder(root / "train", {"n01": 2, "n02": 2}, seed=1)
    write_image_folder(root / "test", {"n01": 1, "n02": 1}, seed=2)
    split = read(tmp_path / "data")
    assert split.data_split == "pilot_released"
    loop = SupervisedLoop({"stream": {"scenario": "B0-Inc1"}, "benchmark": {}}, split)
    assert loop.tags() == {"data_split": "pilot_released"}
    assert data_split_tags(split, "evaluation") == {"data_split.evaluation": "pilot_released"}
    assert data_split_tags(None, "tuning") == {}


def memmapped(tmp_path: Path, n: int = 300) -> tuple[ImageDataset, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", pixels)
    images = np.load(tmp_path / "images.npy", mmap_mode="c")
    labels = np.arange(n) % 5
    return ImageDataset(images, labels, np.array([f"m/{i}" for i in range(n)]), "m"), pixels


def test_subset_of_a_memory_map_reads_nothing_and_stays_a_memory_map(tmp_path):
    data, pixels = memmapped(tmp_path)
    tracemalloc.start()
    try:
        part = data.subset(np.arange(0, 300, 2))
        picked = part.with_classes([4, 2])
        stream = class_incremental_stream(DataSplit(part, part, 5), ClassIncrementalScenario.parse("B0-Inc5"),
                                          [0, 1, 2, 3, 4])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < pixels[::2].nbytes / 10  # index arrays only, no copy of the images
    for view in (part.images, picked.images, stream[0].train.images):
        assert isinstance(view, RowView) and isinstance(view.base, np.memmap)
    expected = pixels[::2][np.isin(np.arange(0, 300, 2) % 5, [4, 2])]
    np.testing.assert_array_equal(np.asarray(picked.images), expected)
    np.testing.assert_array_equal(picked.images[3], expected[3])
    np.testing.assert_array_equal(picked.images[1:4, :, 0], expected[1:4, :, 0])
    np.testing.assert_array_equal(picked.images[[0, 2]], expected[[0, 2]])
    assert picked.images.shape == expected.shape and len(picked.images) == len(expected)
    copy = ImageDataset(expected, picked.labels, picked.ids, "m")
    assert picked.fingerprint() == copy.fingerprint()
    x, _ = stream[0].uint8_tensors("train", "cpu")
    assert torch.equal(x, torch.from_numpy(np.asarray(stream[0].train.images)).permute(0, 3, 1, 2))


def test_to_device_is_an_equal_copy_on_the_cpu():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(to_device(x, "cpu"), x) and to_device(x, torch.device("cpu")).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_copy_to_cuda_and_crops_there(tmp_path):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(to_device(x, "cuda").cpu(), x)
    split = read(banded_root(tmp_path), crop_source_size=32)
    exp = first_experience(split, {"random_resized_crop": {"scale": [1.0, 1.0], "ratio": [2.0, 2.0]}})
    torch.manual_seed(0)
    xb, _ = next(exp.train_batches(8, device="cuda"))
    assert xb.is_cuda and red(xb)[:, :, [0, -1]].all()
