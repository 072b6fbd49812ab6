"""CIFAR-10/100-C ``.npy`` files and the ImageNet-C folder tree, written tiny in their released layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxbench.benchmarks.cifar_c import read_cifar_c_domains  # registers cifar10_c, cifar100_c
from fluxbench.benchmarks.imagenet_c import imagenet_wnids, read_imagenet_c_domains  # registers imagenet_c
from fluxbench.benchmarks.registry import load_dataset
from fluxbench.errors import ConfigError, DataError

PER_SEVERITY = 4  # the release has 10,000


def write_cifar_c(root: Path, folder: str = "CIFAR-10-C", corruptions=("gaussian_noise", "fog"), classes: int = 10):
    """``root/<folder>/<corruption>.npy`` (5 x N rows, severity-major) and ``labels.npy``, as released."""
    rng = np.random.default_rng(0)
    path = root / folder
    path.mkdir(parents=True)
    labels = rng.integers(0, classes, PER_SEVERITY).astype(np.uint8)
    np.save(path / "labels.npy", np.tile(labels, 5))
    written = {}
    for corruption in corruptions:
        images = rng.integers(0, 256, (5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        np.save(path / f"{corruption}.npy", images)
        written[corruption] = images
    return written, labels.astype(np.int64)


def test_cifar10_c_reads_one_severity_slice(tmp_path):
    written, labels = write_cifar_c(tmp_path)
    split = load_dataset({"dataset": "cifar10_c", "corruption": "fog", "severity": 3}, tmp_path)
    assert split.num_classes == 10
    assert np.array_equal(split.test.images, written["fog"][2 * PER_SEVERITY:3 * PER_SEVERITY])
    assert np.array_equal(split.test.labels, labels)
    assert list(split.test.ids) == [f"cifar10_c/fog/3/{i}" for i in range(PER_SEVERITY)]
    assert split.test.class_names[0] == "airplane"
    assert len(split.train) == 0 and split.train.images.shape == (0, 32, 32, 3)


def test_cifar100_c_and_many_domains_at_once(tmp_path):
    written, labels = write_cifar_c(tmp_path, "CIFAR-100-C", ("snow", "frost"), classes=100)
    split = load_dataset({"dataset": "cifar100_c", "corruption": "snow", "severity": 5}, tmp_path)
    assert split.num_classes == 100 and np.array_equal(split.test.images, written["snow"][-PER_SEVERITY:])
    domains = read_cifar_c_domains(tmp_path, "cifar100_c", [("snow", 1), ("frost", 5)])
    assert set(domains) == {("snow", 1), ("frost", 5)}
    assert np.array_equal(domains[("frost", 5)].images, written["frost"][4 * PER_SEVERITY:])
    assert np.array_equal(domains[("snow", 1)].labels, labels)


def test_cifar_c_missing_and_bad_files(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10-C.*zenodo.org/record/2535967"):
        load_dataset({"dataset": "cifar10_c"}, tmp_path)
    write_cifar_c(tmp_path)
    with pytest.raises(DataError, match="snow.npy does not exist"):
        load_dataset({"dataset": "cifar10_c", "corruption": "snow"}, tmp_path)
    folder = tmp_path / "CIFAR-10-C"
    np.save(folder / "contrast.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"contrast.npy: expected uint8 \(5 \* N"):
        load_dataset({"dataset": "cifar10_c", "corruption": "contrast"}, tmp_path)
    np.save(folder / "pixelate.npy", np.array([{"not": "images"}], dtype=object))
    with pytest.raises(DataError, match="pixelate.npy is not a readable .npy"):
        load_dataset({"dataset": "cifar10_c", "corruption": "pixelate"}, tmp_path)
    np.save(folder / "labels.npy", np.full(5 * PER_SEVERITY, 12, dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels outside 0..9"):
        load_dataset({"dataset": "cifar10_c", "corruption": "fog"}, tmp_path)
    (folder / "labels.npy").unlink()
    with pytest.raises(DataError, match="labels.npy does not exist"):
        load_dataset({"dataset": "cifar10_c", "corruption": "fog"}, tmp_path)


def test_cifar_c_bad_names(tmp_path):
    write_cifar_c(tmp_path)
    with pytest.raises(ConfigError, match="unknown corruption 'fogg'"):
        load_dataset({"dataset": "cifar10_c", "corruption": "fogg"}, tmp_path)
    with pytest.raises(ConfigError, match="severity must be an integer 1..5"):
        load_dataset({"dataset": "cifar10_c", "corruption": "fog", "severity": 6}, tmp_path)


WNIDS = ("n01440764", "n15075141")  # ImageNet-1k classes 0 and 999


def write_imagenet_c(root: Path, domains=(("gaussian_noise", 5), ("fog", 2)), per_class: int = 2) -> dict:
    """``root/ImageNet-C/<corruption>/<severity>/<wnid>/ILSVRC2012_val_*.JPEG``: 224 px JPEGs at quality 85."""
    rng = np.random.default_rng(1)
    pixels = {}
    for corruption, severity in domains:
        for wnid in WNIDS:
            folder = root / "ImageNet-C" / corruption / str(severity) / wnid
            folder.mkdir(parents=True)
            for _ in range(per_class):
                name = f"ILSVRC2012_val_{len(pixels) + 1:08d}.JPEG"
                image = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8).repeat(32, 0).repeat(32, 1)
                Image.fromarray(image).save(folder / name, quality=85)
                with Image.open(folder / name) as decoded:
                    pixels[f"{corruption}/{severity}/{wnid}/{name}"] = np.asarray(decoded.convert("RGB"))
    return pixels


def test_imagenet_c_tree_with_imagenet_labels(tmp_path):
    pixels = write_imagenet_c(tmp_path)
    split = load_dataset({"dataset": "imagenet_c", "corruption": "fog", "severity": 2}, tmp_path)
    assert split.num_classes == 1000 and len(split.train) == 0
    assert list(split.test.labels) == [0, 0, 999, 999]
    assert split.test.images.shape == (4, 224, 224, 3)
    for image, sample_id in zip(split.test.images, split.test.ids):
        assert sample_id.startswith("imagenet_c/fog/2/")
        assert np.array_equal(image, pixels[sample_id.removeprefix("imagenet_c/")])
    assert split.test.class_names == imagenet_wnids() and imagenet_wnids()[999] == "n15075141"


def test_imagenet_c_ids_file_and_max_per_class(tmp_path):
    pixels = write_imagenet_c(tmp_path)
    chosen = [k for k in pixels if k.startswith("gaussian_noise/5/")]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(k.split("/", 2)[2] for k in (chosen[3], chosen[0])) + "\n")
    domains = read_imagenet_c_domains(tmp_path, [("gaussian_noise", 5)], ids_file=str(ids_file))
    data = domains[("gaussian_noise", 5)]
    assert [i.removeprefix("imagenet_c/") for i in data.ids] == [chosen[3], chosen[0]]
    assert list(data.labels) == [999, 0]
    few = load_dataset({"dataset": "imagenet_c", "corruption": "gaussian_noise", "max_per_class": 1}, tmp_path)
    assert list(few.test.labels) == [0, 999]


def test_imagenet_c_missing_and_bad_trees(tmp_path):
    with pytest.raises(DataError, match="ImageNet-C"):
        load_dataset({"dataset": "imagenet_c"}, tmp_path)
    write_imagenet_c(tmp_path)
    with pytest.raises(DataError, match="ImageNet-C/snow/5 does not exist; extract weather.tar from .*2235448"):
        load_dataset({"dataset": "imagenet_c", "corruption": "snow"}, tmp_path)
    (tmp_path / "ImageNet-C" / "fog" / "2" / "not_a_wnid").mkdir()
    (tmp_path / "ImageNet-C" / "fog" / "2" / "not_a_wnid" / "x.JPEG").write_bytes(b"")
    with pytest.raises(DataError, match="not ImageNet-1k wnids"):
        load_dataset({"dataset": "imagenet_c", "corruption": "fog", "severity": 2}, tmp_path)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("n01440764/ILSVRC2012_val_99999999.JPEG\n")
    with pytest.raises(DataError, match="1 images of .*ids.txt are missing"):
        load_dataset({"dataset": "imagenet_c", "ids_file": str(ids_file)}, tmp_path)
    ids_file.write_text("just-a-file.JPEG\n")
    with pytest.raises(DataError, match="ids.txt:1: expected '<wnid>/<file>'"):
        load_dataset({"dataset": "imagenet_c", "ids_file": str(ids_file)}, tmp_path)
    with pytest.raises(ConfigError, match="severity must be an integer 1..5"):
        load_dataset({"dataset": "imagenet_c", "severity": 0}, tmp_path)


HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def test_cifar10_c_extra_files_are_read_beside_the_standard_ones(tmp_path):
    written, labels = write_cifar_c(tmp_path, corruptions=("fog",) + HELD_OUT)
    domains = read_cifar_c_domains(tmp_path, "cifar10_c", [(c, 5) for c in HELD_OUT] + [("fog", 1)])
    for corruption in HELD_OUT:
        data = domains[(corruption, 5)]
        assert np.array_equal(data.images, written[corruption][4 * PER_SEVERITY:])
        assert np.array_equal(data.labels, labels) and data.ids[0] == f"cifar10_c/{corruption}/5/0"
    split = load_dataset({"dataset": "cifar10_c", "corruption": "saturate", "severity": 2}, tmp_path)
    assert np.array_equal(split.test.images, written["saturate"][PER_SEVERITY:2 * PER_SEVERITY])


def test_imagenet_c_extra_tar_tree(tmp_path):
    pixels = write_imagenet_c(tmp_path, domains=(("spatter", 3), ("saturate", 5)), per_class=1)
    domains = read_imagenet_c_domains(tmp_path, [("spatter", 3), ("saturate", 5)])
    for (corruption, severity), data in domains.items():
        assert list(data.labels) == [0, 999] and data.images.shape == (2, 224, 224, 3)
        for image, sample_id in zip(data.images, data.ids):
            assert sample_id.startswith(f"imagenet_c/{corruption}/{severity}/")
            assert np.array_equal(image, pixels[sample_id.removeprefix("imagenet_c/")])
    for corruption in ("speckle_noise", "gaussian_blur"):  # not extracted: the error names the tar that has it
        with pytest.raises(DataError, match=f"ImageNet-C/{corruption}/5 does not exist; extract extra.tar from"):
            load_dataset({"dataset": "imagenet_c", "corruption": corruption}, tmp_path)
