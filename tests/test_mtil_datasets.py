"""The 11 MTIL datasets in their released layouts (tiny fakes, written as released) and ``benchmark=mtil``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets_fixtures import write_cifar100, write_jpeg
from scipy.io import savemat

from fluxbench.benchmarks import load_dataset
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.mtil import ORDER, MtilSource, dataset_names
from fluxbench.benchmarks.mtil_names import CALTECH101, EUROSAT, FLOWERS102
from fluxbench.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")


def jpegs(paths) -> None:
    for path in paths:
        write_jpeg(path, RNG, (12, 10))


def write_aircraft(root: Path) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    rows = {"train": ["0001 707-320", "0002 F/A-18", "0003 A300B4", "0004 707-320"],
            "test": ["0005 A300B4", "0006 F/A-18"]}
    for split, lines in rows.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        jpegs(data / "images" / f"{line.split()[0]}.jpg" for line in lines)


def write_caltech(root: Path, per_class: int = 1) -> list[str]:
    folder = root / "caltech101" / "101_ObjectCategories"
    categories = ["Faces", "Faces_easy", "Leopards", "Motorbikes", *[f"cat{i:03d}" for i in range(97)]]
    for c in [*categories, "BACKGROUND_Google"]:
        jpegs(folder / c / f"image_{k:04d}.jpg" for k in range(1, per_class + 1))
    return sorted(categories)


def write_dtd(root: Path, torchvision_nesting: bool = False) -> None:
    base = root / "dtd" / "dtd" if torchvision_nesting else root / "dtd"
    lists = {"train1": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0001.jpg", "banded/banded_0002.jpg"],
             "test1": ["zigzagged/zigzagged_0002.jpg", "banded/banded_0003.jpg"], "val1": []}
    (base / "labels").mkdir(parents=True)
    for name, lines in lists.items():
        (base / "labels" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        jpegs(base / "images" / line for line in lines)


def write_eurosat(root: Path, per_class: int = 2) -> None:
    for c in EUROSAT_FOLDERS:
        jpegs(root / "eurosat" / "2750" / c / f"{c}_{k}.jpg" for k in range(1, per_class + 1))


def write_flowers(root: Path) -> None:
    folder = root / "flowers-102"
    labels = np.array([1, 2, 102, 1, 2, 102])  # 1-based, image k has labels[k-1]
    jpegs(folder / "jpg" / f"image_{k:05d}.jpg" for k in range(1, 7))
    savemat(folder / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2]]),
                                   "tstid": np.array([[4, 5, 6]])})


def write_food(root: Path, as_text: bool = False) -> None:
    folder = root / "food-101"
    meta = {"train": {"apple_pie": ["apple_pie/1", "apple_pie/2"], "baby_back_ribs": ["baby_back_ribs/3"]},
            "test": {"baby_back_ribs": ["baby_back_ribs/4"], "apple_pie": ["apple_pie/5"]}}
    (folder / "meta").mkdir(parents=True)
    for split, groups in meta.items():
        if as_text:
            (folder / "meta" / f"{split}.txt").write_text("".join(f"{p}\n" for g in groups.values() for p in g))
        else:
            (folder / "meta" / f"{split}.json").write_text(json.dumps(groups))
        jpegs(folder / "images" / f"{p}.jpg" for g in groups.values() for p in g)


def write_mnist(root: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        head = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
        head = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(head + labels.tobytes())
        out[split] = (images, labels)
    return out


def write_pets(root: Path) -> None:
    folder = root / "oxford-iiit-pet"
    rows = {"trainval": ["Abyssinian_1 1 1 1", "american_bulldog_2 2 2 1", "Abyssinian_3 1 1 1"],
            "test": ["american_bulldog_4 2 2 1", "Abyssinian_5 1 1 1"]}
    (folder / "annotations").mkdir(parents=True)
    for split, lines in rows.items():
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        jpegs(folder / "images" / f"{line.split()[0]}.jpg" for line in lines)


def _annos(rows: list[tuple[str, int]]) -> np.ndarray:
    annos = np.zeros((1, len(rows)), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
    for k, (fname, cls) in enumerate(rows):
        annos[0, k] = (np.array([[1]]), np.array([[cls]]), np.array([fname]))
    return annos


def write_cars_devkit(root: Path) -> None:
    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    names = np.array([["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"]], dtype=object)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names})
    train, test = [("00001.jpg", 2), ("00002.jpg", 1), ("00003.jpg", 2)], [("00001.jpg", 1), ("00002.jpg", 2)]
    savemat(folder / "devkit" / "cars_train_annos.mat", {"annotations": _annos(train)})
    savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": _annos(test)})
    jpegs(folder / "cars_train" / f for f, _ in train)
    jpegs(folder / "cars_test" / f for f, _ in test)


def write_cars_folders(root: Path) -> None:
    folder = root / "stanford_cars"
    top = folder / "car_data" / "car_data"
    (folder).mkdir(parents=True)
    (folder / "names.csv").write_text("Ram C/V Cargo Van Minivan 2012\nAM General Hummer SUV 2000\n")
    for split, n in (("train", 2), ("test", 1)):
        for c in ("Ram C-V Cargo Van Minivan 2012", "AM General Hummer SUV 2000"):
            jpegs(top / split / c / f"{k:05d}.jpg" for k in range(n))


def write_sun397(root: Path, per_class: int = 3) -> None:
    folder = root / "SUN397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    folder.mkdir(parents=True)
    (folder / "ClassName.txt").write_text("".join(f"{c}\n" for c in classes))
    files = [f"{c}/sun_{c.split('/')[2][:3]}{k}.jpg" for c in classes for k in range(per_class)]
    jpegs(folder / f.lstrip("/") for f in files)
    (folder / "Partitions").mkdir()
    (folder / "Partitions" / "Training_01.txt").write_text("".join(f"{f}\n" for f in files[::2]))
    (folder / "Partitions" / "Testing_01.txt").write_text("".join(f"{f}\n" for f in files[1::2]))


def listing(name: str, root: Path, **options):
    from fluxbench.benchmarks.mtil import DATASETS

    return DATASETS[name].lister(root, **options)


def test_aircraft_variants_and_its_train_test_files(tmp_path):
    write_aircraft(tmp_path)
    got = listing("aircraft", tmp_path)
    assert got.classnames == ("707-320", "A300B4", "F/A-18")
    assert got.train.labels.tolist() == [0, 2, 1, 0] and got.test.labels.tolist() == [1, 2]
    split = load_dataset({"dataset": "fgvc_aircraft", "image_size": 16}, tmp_path)
    assert split.train.images.shape == (4, 16, 16, 3) and split.test.ids[0] == "fgvc_aircraft/0005.jpg"


def test_caltech101_drops_the_background_and_splits_80_20_like_torch_random_split(tmp_path):
    categories = write_caltech(tmp_path, per_class=2)
    got = listing("caltech101", tmp_path)
    assert got.classnames == CALTECH101 and len(got.train) == int(0.8 * 202) and len(got.test) == 202 - 161
    perm = torch.randperm(202, generator=torch.Generator().manual_seed(42)).tolist()
    order = [(c, k) for c in categories for k in (1, 2)]  # torchvision's order: category, then image number
    first = order[perm[0]]
    assert got.train.files[0].parts[-2:] == (first[0], f"image_{first[1]:04d}.jpg")
    assert got.train.labels[0] == categories.index(first[0])


def test_dtd_train1_test1_in_both_nestings(tmp_path):
    for nested in (False, True):
        root = tmp_path / str(nested)
        write_dtd(root, nested)
        got = listing("dtd", root)
        assert got.classnames == ("banded", "zigzagged")
        assert got.train.labels.tolist() == [0, 1, 0] and got.test.labels.tolist() == [1, 0]


def test_eurosat_names_the_sorted_folders_with_zscl_names(tmp_path):
    write_eurosat(tmp_path, per_class=2)
    got = listing("eurosat", tmp_path)
    assert got.classnames == EUROSAT and (len(got.train), len(got.test)) == (16, 4)
    labels = np.concatenate([got.train.labels, got.test.labels])
    assert np.bincount(labels).tolist() == [2] * 10
    assert all(f.parent.name == EUROSAT_FOLDERS[y] for f, y in zip(got.train.files, got.train.labels))


def test_flowers_labels_from_imagelabels_mat_and_splits_from_setid_mat(tmp_path):
    write_flowers(tmp_path)
    got = listing("flowers", tmp_path)
    assert got.classnames == FLOWERS102
    assert [f.name for f in got.train.files] == ["image_00001.jpg", "image_00003.jpg"]
    assert got.train.labels.tolist() == [0, 101] and got.test.labels.tolist() == [0, 1, 101]


def test_food_meta_json_or_txt(tmp_path):
    for as_text in (False, True):
        root = tmp_path / str(as_text)
        write_food(root, as_text)
        got = listing("food", root)
        assert got.classnames == ("apple pie", "baby back ribs")
        assert got.train.labels.tolist() == [0, 0, 1] and sorted(got.test.labels.tolist()) == [0, 1]


def test_mnist_idx_files_plain_or_gzipped_become_rgb_at_the_stream_size(tmp_path):
    written = write_mnist(tmp_path)
    got = listing("mnist", tmp_path)
    assert got.classnames[3] == "3 - three" and got.test.labels.tolist() == written["test"][1].tolist()
    split = load_dataset({"dataset": "mnist"}, tmp_path)
    assert split.train.images.shape == (20, 28, 28, 3)
    np.testing.assert_array_equal(split.train.images[5, ..., 1], written["train"][0][5])
    assert got.decode("train", ResizeRule(32, 1.0), np.array([1, 2])).images.shape == (2, 32, 32, 3)


def test_pets_breeds_in_title_case_from_trainval_and_test(tmp_path):
    write_pets(tmp_path)
    got = listing("pets", tmp_path)
    assert got.classnames == ("Abyssinian", "American Bulldog")
    assert got.train.labels.tolist() == [0, 1, 0] and got.test.labels.tolist() == [1, 0]


def test_stanford_cars_devkit_mat_files_and_the_folder_form(tmp_path):
    write_cars_devkit(tmp_path / "devkit")
    got = listing("cars", tmp_path / "devkit")
    assert got.classnames == ("AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012")
    assert got.train.labels.tolist() == [1, 0, 1] and got.test.labels.tolist() == [0, 1]
    assert got.train.files[0].parent.name == "cars_train"
    write_cars_folders(tmp_path / "folders")
    got = listing("cars", tmp_path / "folders")
    assert got.classnames == ("Ram C/V Cargo Van Minivan 2012", "AM General Hummer SUV 2000")  # names.csv order
    assert got.train.labels.tolist() == [0, 0, 1, 1] and got.test.labels.tolist() == [0, 1]


def test_sun397_random_split_over_sorted_files_or_the_partitions(tmp_path):
    write_sun397(tmp_path)
    got = listing("sun397", tmp_path)
    assert got.classnames == ("abbey", "apartment building/outdoor", "bakery/shop")
    assert (len(got.train), len(got.test)) == (7, 2)
    part = listing("sun397", tmp_path, split="partitions")
    assert part.train.labels.tolist() == [0, 0, 1, 2, 2] and part.test.labels.tolist() == [0, 1, 1, 2]


def test_cifar100_names_with_spaces(tmp_path):
    write_cifar100(tmp_path)
    got = listing("cifar100", tmp_path)
    assert got.classnames[1] == "class 01" and len(got.train) == 300


def test_a_missing_dataset_is_one_line_naming_the_file_and_where_it_is_published(tmp_path):
    write_food(tmp_path)
    (tmp_path / "food-101" / "meta" / "test.json").unlink()
    with pytest.raises(DataError) as err:
        MtilSource({"datasets": ["food"]}, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "meta/test.txt" in message and "ethz.ch" in message
    with pytest.raises(DataError, match=r"fgvc-aircraft-2013b .*robots\.ox\.ac\.uk"):
        MtilSource({"datasets": ["Aircraft"]}, tmp_path)
    with pytest.raises(DataError, match=r"MNIST/raw/train-images-idx3-ubyte"):
        write_mnist(tmp_path)
        (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").unlink()
        MtilSource({"datasets": ["mnist"]}, tmp_path)


def test_dataset_names_pick_a_subset_and_an_order():
    assert dataset_names(None) == list(ORDER) and len(ORDER) == 11
    assert dataset_names(["SUN397", "OxfordPet", "stanford_cars"]) == ["sun397", "pets", "cars"]
    with pytest.raises(ConfigError, match="unknown MTIL dataset 'imagenet'"):
        dataset_names(["imagenet"])


def test_a_short_mtil_run_over_two_tiny_released_datasets(make_config, tmp_path):
    from fluxbench.protocols import mtil
    from fluxbench.tracking import Tracker

    write_dtd(tmp_path / "data")
    write_pets(tmp_path / "data")
    cfg = make_config("protocol=mtil", "method=clip_lora", "benchmark=mtil", "backbone=tiny_clip",
                      "benchmark.datasets=[pets,dtd]", "benchmark.image_size=32", "protocol.shots=2",
                      "method.iterations=2", "method.batch_size=4", f"data_root={tmp_path / 'data'}")
    out = mtil.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))["seeds"][0].metrics
    assert {"mtil_transfer", "mtil_average", "mtil_last", "xtail_last", "effective_rank_mean"} <= set(out)
    assert 0.0 <= out["mtil_last"] <= 1.0
    loop = mtil.MtilLoop(cfg)
    stream = loop.stream(0)
    assert [e.metadata["dataset"] for e in stream] == ["pets", "dtd"]
    assert stream[0].metadata["prompts"] == ["a photo of a Abyssinian, a type of pet.",
                                             "a photo of a American Bulldog, a type of pet."]
    assert stream[1].metadata["prompts"][1] == "a photo of a zigzagged texture."
    assert len(stream[0].train) == 3 and stream[1].test.images.shape == (2, 32, 32, 3)  # 2 shots of 2 classes
