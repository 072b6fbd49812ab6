"""Folder readers (ImageNet-R/-A, ImageNet-100, CUB-200) on real JPEG trees, and the decode-once cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from datasets_fixtures import random_photo, write_cub, write_image_folder, write_jpeg
from PIL import Image

from fluxbench.benchmarks import cub, imagefolder, imagenet100  # noqa: F401  (register the readers)
from fluxbench.benchmarks.base import shared_samples
from fluxbench.benchmarks.folder_cache import ResizeRule, cache_stats, decode_image, decode_images
from fluxbench.benchmarks.registry import load_dataset
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream, class_order

WNIDS = {"n01443537": 10, "n01484850": 5, "n01494475": 7, "n01498041": 2}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so hits and misses are this test's alone."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FLUXBENCH_CACHE", str(path))
    return path


@pytest.fixture()
def imagenet_r(tmp_path) -> Path:
    root = tmp_path / "data"
    write_image_folder(root / "imagenet-r", WNIDS)
    (root / "imagenet-r" / "README.txt").write_text("ImageNet-R\n")  # the archive ships one
    return root


def read(data_root: Path, dataset: str = "imagenet_r", **options) -> object:
    return load_dataset({"dataset": dataset, "image_size": 16, **options}, data_root)


def test_imagenet_r_raw_archive_split_80_20_per_class(imagenet_r):
    split = read(imagenet_r)
    assert split.num_classes == 4 and split.train.class_names == tuple(sorted(WNIDS))
    assert split.train.images.shape[1:] == (16, 16, 3) and split.train.images.dtype == np.uint8
    test_counts = np.bincount(split.test.labels, minlength=4).tolist()
    train_counts = np.bincount(split.train.labels, minlength=4).tolist()
    assert test_counts == [2, 1, 1, 1]  # round(0.2 n), at least one
    assert [a + b for a, b in zip(train_counts, test_counts)] == list(WNIDS.values())
    assert not set(split.train.ids) & set(split.test.ids)
    every = {f"imagenet_r/{w}/{w}_{i}.jpg" for w, n in WNIDS.items() for i in range(n)}
    assert set(split.train.ids) | set(split.test.ids) == every
    assert all(i.split("/")[1] == split.train.class_names[c] for i, c in zip(split.train.ids, split.train.labels))


def test_split_is_deterministic_and_per_class(imagenet_r, tmp_path):
    first = read(imagenet_r)
    again = read(imagenet_r)
    np.testing.assert_array_equal(first.test.ids, again.test.ids)
    # another copy with one class more: the four shared classes split exactly the same way
    other = tmp_path / "other"
    write_image_folder(other / "imagenet-r", {**WNIDS, "n01440764": 6})
    bigger = read(other)
    assert set(first.test.ids) < set(bigger.test.ids)
    assert len(set(bigger.test.ids) - set(first.test.ids)) == 1


def test_pre_split_train_test_tree_is_used_as_is(tmp_path):
    root = tmp_path / "data" / "imagenet-a"
    write_image_folder(root / "train", {"n02": 3, "n01": 4}, seed=1)
    write_image_folder(root / "test", {"n01": 2, "n02": 1}, seed=2)
    split = read(tmp_path / "data", "imagenet_a")
    assert split.train.class_names == ("n01", "n02")
    assert np.bincount(split.train.labels).tolist() == [4, 3] and np.bincount(split.test.labels).tolist() == [2, 1]
    assert split.test.ids[0] == "imagenet_a/test/n01/n01_0.jpg"


def test_cache_pixels_equal_the_literature_test_transform(tmp_path):
    from torchvision import transforms

    path = write_jpeg(tmp_path / "a.jpg", np.random.default_rng(3), (57, 41))
    rule = ResizeRule(image_size=24, crop_pct=0.875)
    reference = transforms.Compose([
        transforms.Resize(rule.resize_to, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(24),
    ])
    with Image.open(path) as image:
        expected = np.asarray(reference(image.convert("RGB")))
    assert rule.resize_to == 27
    np.testing.assert_array_equal(decode_image(path, rule), expected)
    np.testing.assert_array_equal(decode_images([path], rule).images[0], expected)


def test_second_read_hits_the_cache(imagenet_r, own_cache):
    before = cache_stats()
    first = read(imagenet_r)
    middle = cache_stats()
    files = sorted(own_cache.joinpath("data").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    second = read(imagenet_r)
    after = cache_stats()
    # train, test and the training crop source (the whole images)
    assert (middle["misses"] - before["misses"], middle["hits"] - before["hits"]) == (3, 0)
    assert (after["misses"] - middle["misses"], after["hits"] - middle["hits"]) == (0, 3)
    assert [f.name for f in files] == sorted(f.name for f in own_cache.joinpath("data").iterdir())
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert isinstance(second.train.images, np.memmap)
    np.testing.assert_array_equal(first.train.images, second.train.images)


def test_cache_key_follows_files_and_size(imagenet_r, tmp_path):
    files = sorted((imagenet_r / "imagenet-r" / "n01484850").glob("*.jpg"))
    rule = ResizeRule(16)
    assert not decode_images(files, rule).hit
    assert decode_images(files, rule).hit
    assert not decode_images(files, ResizeRule(20)).hit  # another size
    assert not decode_images(files[:-1], rule).hit  # another file list
    random_photo(np.random.default_rng(9), 30, 30).save(files[0], quality=80)  # an edited file
    os.utime(files[0], ns=(1, 1))
    assert not decode_images(files, rule).hit


def test_cached_images_are_copy_on_write(imagenet_r):
    files = sorted((imagenet_r / "imagenet-r" / "n01494475").glob("*.jpg"))
    first = decode_images(files, ResizeRule(16)).images
    expected = np.array(first)
    first[:] = 0  # a method scribbling on its data must not damage the cache
    np.testing.assert_array_equal(decode_images(files, ResizeRule(16)).images, expected)


def test_damaged_cache_file_is_rebuilt(imagenet_r):
    files = sorted((imagenet_r / "imagenet-r" / "n01443537").glob("*.jpg"))
    built = decode_images(files, ResizeRule(16))
    expected = np.array(built.images)
    built.path.write_bytes(built.path.read_bytes()[:200])
    again = decode_images(files, ResizeRule(16))
    assert not again.hit
    np.testing.assert_array_equal(again.images, expected)


def test_unreadable_image_names_the_file_and_leaves_nothing(imagenet_r, own_cache):
    bad = imagenet_r / "imagenet-r" / "n01494475" / "n01494475_3.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    with pytest.raises(DataError, match=r"cannot read image .*n01494475_3\.jpg") as info:
        read(imagenet_r)
    assert "\n" not in str(info.value)
    assert list(own_cache.joinpath("data").iterdir()) == []
    bad.write_text("not an image")
    with pytest.raises(DataError, match=r"n01494475_3\.jpg: cannot identify image file"):
        read(imagenet_r)


def test_missing_data_root_and_dataset_folders(tmp_path):
    with pytest.raises(DataError, match=r"data_root .*absent does not exist; .*imagenet-r/<wnid>.*hendrycks"):
        read(tmp_path / "absent")
    with pytest.raises(DataError, match=r"imagenet-r does not exist; expected imagenet-r/<wnid>/<image>.*hendrycks"):
        read(tmp_path)
    with pytest.raises(DataError, match=r"imagenet-a does not exist.*natural-adv-examples"):
        read(tmp_path, "imagenet_a")
    with pytest.raises(DataError, match=r"imagenet100 does not exist; expected imagenet100/train/.*image-net.org"):
        read(tmp_path, "imagenet100")
    with pytest.raises(DataError, match=r"CUB_200_2011 does not exist; expected .*images.txt.*cub_200_2011"):
        read(tmp_path, "cub200")
    (tmp_path / "imagenet-r").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        read(tmp_path)
    (tmp_path / "imagenet-r" / "n01").mkdir()
    with pytest.raises(DataError, match=r"class folder .*n01 has no images"):
        read(tmp_path)


def test_class_ranges_through_load_dataset_and_fingerprints(imagenet_r):
    low = read(imagenet_r, classes="0-1")
    high = read(imagenet_r, classes="2-3")
    assert low.num_classes == 2 and low.train.class_names == tuple(sorted(WNIDS)[:2])
    assert set(low.train.labels.tolist()) == {0, 1} and set(high.train.labels.tolist()) == {0, 1}
    assert low.fingerprint() == read(imagenet_r, classes="0-1").fingerprint()
    assert low.fingerprint() != high.fingerprint()
    assert shared_samples(low, high) == 0
    whole = read(imagenet_r)
    assert shared_samples(whole, low) == len(low.train) + len(low.test)
    with pytest.raises(DataError, match=r"classes \[4, 5\] requested"):
        read(imagenet_r, classes="2-5")


def test_folder_stream_and_too_few_classes(imagenet_r):
    split = read(imagenet_r)
    stream = class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc2"), class_order(4, 1993))
    assert [len(exp.classes) for exp in stream] == [2, 2]
    assert sum(len(exp.train) for exp in stream) == len(split.train)
    with pytest.raises(DataError, match="needs 10 classes"):
        class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc10"), class_order(4, 1993))


def test_bad_resize_options_are_config_errors(imagenet_r):
    with pytest.raises(ConfigError, match="crop_pct must be in"):
        read(imagenet_r, crop_pct=1.5)
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        read(imagenet_r, interpolation="lanczos9")


@pytest.fixture()
def imagenet100_root(tmp_path) -> Path:
    root = tmp_path / "data" / "imagenet100"
    write_image_folder(root / "train", {"n03": 3, "n01": 3, "n02": 2}, seed=4, ext=".JPEG")
    write_image_folder(root / "val", {"n03": 1, "n01": 2, "n02": 1}, seed=5, ext=".JPEG")
    return root


def test_imagenet100_train_val_and_class_list(imagenet100_root):
    data_root = imagenet100_root.parent
    split = read(data_root, "imagenet100")
    assert split.num_classes == 3 and split.train.class_names == ("n01", "n02", "n03")
    assert len(split.train) == 8 and np.bincount(split.test.labels).tolist() == [2, 1, 1]
    (imagenet100_root / "imagenet100.txt").write_text("n03 some name\n\nn01\n")
    listed = read(data_root, "imagenet100", class_list="imagenet100.txt")
    assert listed.train.class_names == ("n01", "n03") and len(listed.train) == 6
    assert listed.train.ids[0] == "imagenet100/train/n01/n01_0.JPEG"


def test_imagenet100_class_list_errors(imagenet100_root):
    data_root = imagenet100_root.parent
    (imagenet100_root / "list.txt").write_text("n01\nn09\n")
    with pytest.raises(DataError, match=r"class list .*list.txt names 1 classes that are not in the data: \['n09'\]"):
        read(data_root, "imagenet100", class_list="list.txt")
    with pytest.raises(DataError, match=r"class list .*nope.txt does not exist"):
        read(data_root, "imagenet100", class_list="nope.txt")
    (imagenet100_root / "list.txt").write_text("n01\nn01\n")
    with pytest.raises(DataError, match=r"repeats \['n01'\]"):
        read(data_root, "imagenet100", class_list="list.txt")
    for path in (imagenet100_root / "val" / "n02").iterdir():
        path.unlink()
    (imagenet100_root / "val" / "n02").rmdir()
    with pytest.raises(DataError, match=r"val lacks class folders \['n02'\]"):
        read(data_root, "imagenet100")


def test_cub_official_split_and_labels(tmp_path):
    write_cub(tmp_path, num_classes=3, per_class=4)
    split = read(tmp_path, "cub200")
    assert split.num_classes == 3 and split.train.class_names == ("001.Bird_1", "002.Bird_2", "003.Bird_3")
    assert len(split.train) == 6 and len(split.test) == 6
    assert split.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.train.ids[:2].tolist() == ["cub200/001.Bird_1/Bird_1_0000.jpg", "cub200/001.Bird_1/Bird_1_0002.jpg"]
    assert split.test.ids[0] == "cub200/001.Bird_1/Bird_1_0001.jpg"
    assert shared_samples(split, read(tmp_path, "cub200")) == 12


def test_cub_broken_index_files(tmp_path):
    root = write_cub(tmp_path, num_classes=2, per_class=2)
    labels = root / "image_class_labels.txt"
    labels.write_text("1 1\n2 one\n3 2\n4 2\n")
    with pytest.raises(DataError, match=r"image 2 has class 'one'"):
        read(tmp_path, "cub200")
    labels.write_text("1 1\n2 1\n3 2\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt has no entry for image ids \[4\]"):
        read(tmp_path, "cub200")
    labels.write_text("1 1\n2 1\n3 2\nfour 2\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt, line 4: expected '<id> <value>'"):
        read(tmp_path, "cub200")
    labels.write_text("1 1\n2 1\n3 2\n4 2\n")
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match=r"train_test_split.txt does not exist; extract CUB_200_2011.tgz"):
        read(tmp_path, "cub200")
