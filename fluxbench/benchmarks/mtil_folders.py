"""Readers for the MTIL image datasets in their released layouts, with ZSCL's splits and class names.

ZSCL (github.com/Thunderbeee/ZSCL, ``mtil/src/datasets/collections.py``) reads these through torchvision, so
each layout below is the one torchvision reads (``data_root`` = its ``root``), and the splits are ZSCL's:

==============  =============================================================  ==================================
reader          layout under ``data_root``                                     train / test
==============  =============================================================  ==================================
fgvc_aircraft   ``fgvc-aircraft-2013b/data/{variants.txt,                      ``images_variant_train`` / ``_test``
                images_variant_{train,test}.txt, images/<id>.jpg}``
caltech101      ``caltech101/101_ObjectCategories/<category>/image_NNNN.jpg``  80/20 random split, seed 42
dtd             ``dtd/{images/<class>/*.jpg, labels/{train,test}1.txt}``        ``train1`` / ``test1``
                (torchvision's ``dtd/dtd/`` also accepted)
eurosat         ``eurosat/2750/<class>/*.jpg``                                 80/20 random split, seed 42
flowers102      ``flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}``  ``trnid`` / ``tstid``
food101         ``food-101/{images/<class>/<id>.jpg, meta/{train,test}.json}``  the meta files (``.txt`` also read)
oxford_pets     ``oxford-iiit-pet/{images/<id>.jpg, annotations/{trainval,test}.txt}``  ``trainval`` / ``test``
sun397          ``SUN397/{ClassName.txt, <l>/<class>/sun_*.jpg}``              80/20 random split, seed 42, or
                                                                               ``split=partitions``:
                                                                               ``Partitions/{Training,Testing}_01.txt``
==============  =============================================================  ==================================

The 80/20 split is ``torch.utils.data.random_split`` with ``manual_seed(42)`` over torchvision's sample order
(category, then file); for SUN397 torchvision's order is the file system's ``rglob``, which no other machine
reproduces, so files are sorted first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fluxbench.benchmarks.imagefolder import IMAGE_EXTENSIONS, class_folders, list_images
from fluxbench.benchmarks.listing import Listing, Part, need, random_split, read_lines, register_listing, split_files
from fluxbench.benchmarks.mtil_names import CALTECH101, EUROSAT, FLOWERS102
from fluxbench.errors import DataError


def _root(data_root: Path, folder: str, layout: str, source: str) -> Path:
    return need(data_root / folder, f"{folder}/ holding {layout}", source)


def _labels(names: list[str], classes: list[str], where: Path) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{where} names classes {unknown[:3]} that the class list does not have")
    return np.array([index[n] for n in names], dtype=np.int64)


@register_listing("fgvc_aircraft")
def list_aircraft(data_root: Path, folder: str = "fgvc-aircraft-2013b") -> Listing:
    """FGVC-Aircraft 2013b, 100 variants: 3,334 train / 3,333 test images."""
    source, layout = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", "data/variants.txt and data/images/"
    data = _root(data_root, folder, layout, source) / "data"
    classes = read_lines(data / "variants.txt", layout, source)
    parts = {}
    for split in ("train", "test"):
        path = data / f"images_variant_{split}.txt"
        rows = [line.split(" ", 1) for line in read_lines(path, layout, source)]
        files = tuple(data / "images" / f"{r[0]}.jpg" for r in rows)
        parts[split] = Part(_labels([r[-1] for r in rows], classes, path), files, data / "images")
    return Listing("fgvc_aircraft", tuple(classes), parts["train"], parts["test"])


def _random_split_listing(name: str, root: Path, classes: list[str], names: tuple[str, ...]) -> Listing:
    files, labels = list_images(root, classes)
    train, test = random_split(len(files))
    return Listing(name, names, split_files(files, labels, root, train), split_files(files, labels, root, test))


@register_listing("caltech101")
def list_caltech101(data_root: Path, folder: str = "caltech101") -> Listing:
    """Caltech-101: 101 categories (BACKGROUND_Google dropped), 8,677 images split 80/20."""
    source = "https://data.caltech.edu/records/mzrjq-6wc02"
    root = _root(data_root, folder, "101_ObjectCategories/<category>/image_NNNN.jpg", source) / "101_ObjectCategories"
    classes = [c for c in class_folders(need(root, "101_ObjectCategories/<category>/", source))
               if c != "BACKGROUND_Google"]
    if len(classes) != len(CALTECH101):
        raise DataError(f"{root} has {len(classes)} categories besides BACKGROUND_Google; Caltech-101 has 101")
    return _random_split_listing("caltech101", root, classes, CALTECH101)


@register_listing("eurosat")
def list_eurosat(data_root: Path, folder: str = "eurosat/2750") -> Listing:
    """EuroSAT RGB: 10 land-use classes, 27,000 images split 80/20."""
    source = "https://github.com/phelber/EuroSAT"
    root = _root(data_root, folder, "<class>/<class>_N.jpg (EuroSAT.zip)", source)
    classes = class_folders(root)
    if len(classes) != len(EUROSAT):
        raise DataError(f"{root} has {len(classes)} class folders; EuroSAT has 10 (AnnualCrop ... SeaLake)")
    return _random_split_listing("eurosat", root, classes, EUROSAT)


@register_listing("dtd")
def list_dtd(data_root: Path, folder: str = "dtd", partition: int = 1) -> Listing:
    """DTD: 47 textures; train1 (1,880) / test1 (1,880) images."""
    source, layout = "https://www.robots.ox.ac.uk/~vgg/data/dtd/", "images/<class>/ and labels/train1.txt, test1.txt"
    root = _root(data_root, folder, layout, source)
    root = root / "dtd" if (root / "dtd" / "labels").is_dir() else root  # torchvision's dtd/dtd/
    rows = {s: read_lines(root / "labels" / f"{s}{partition}.txt", layout, source) for s in ("train", "test")}
    classes = sorted({r.split("/")[0] for r in rows["train"]})
    parts = {s: Part(_labels([r.split("/")[0] for r in lines], classes, root / "labels" / f"{s}{partition}.txt"),
                     tuple(root / "images" / r for r in lines), root / "images") for s, lines in rows.items()}
    return Listing("dtd", tuple(c.replace("_", " ") for c in classes), parts["train"], parts["test"])


@register_listing("flowers102")
def list_flowers102(data_root: Path, folder: str = "flowers-102") -> Listing:
    """Oxford Flowers-102: 1,020 train (``trnid``) / 6,149 test (``tstid``) images."""
    from scipy.io import loadmat

    source, layout = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", "jpg/, imagelabels.mat and setid.mat"
    root = _root(data_root, folder, layout, source)
    labels = np.asarray(loadmat(need(root / "imagelabels.mat", layout, source), squeeze_me=True)["labels"]) - 1
    sets = loadmat(need(root / "setid.mat", layout, source), squeeze_me=True)
    parts = {}
    for split, key in (("train", "trnid"), ("test", "tstid")):
        ids = np.atleast_1d(np.asarray(sets[key], dtype=np.int64))
        files = tuple(root / "jpg" / f"image_{i:05d}.jpg" for i in ids)
        parts[split] = Part(labels[ids - 1].astype(np.int64), files, root / "jpg")
    return Listing("flowers102", FLOWERS102, parts["train"], parts["test"])


def _food_split(meta: Path, split: str, source: str) -> dict[str, list[str]]:
    """``meta/<split>.json`` (class -> ``class/id`` list) or ``meta/<split>.txt`` (one ``class/id`` a line)."""
    if (meta / f"{split}.json").is_file():
        try:
            return json.loads((meta / f"{split}.json").read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{meta / f'{split}.json'} is not valid JSON: {err}") from None
    groups: dict[str, list[str]] = {}
    for line in read_lines(meta / f"{split}.txt", f"meta/{split}.json or meta/{split}.txt", source):
        groups.setdefault(line.split("/")[0], []).append(line)
    return groups


@register_listing("food101")
def list_food101(data_root: Path, folder: str = "food-101") -> Listing:
    """Food-101: 101 dishes, 75,750 train / 25,250 test images."""
    source = "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"
    root = _root(data_root, folder, "images/<class>/<id>.jpg and meta/{train,test}.json", source)
    parts, classes = {}, None
    for split in ("train", "test"):
        groups = _food_split(root / "meta", split, source)
        classes = classes or sorted(groups)
        paths = [p for c in groups for p in groups[c]]
        labels = _labels([p.split("/")[0] for p in paths], classes, root / "meta" / split)
        parts[split] = Part(labels, tuple(root / "images" / f"{p}.jpg" for p in paths), root / "images")
    return Listing("food101", tuple(c.replace("_", " ") for c in classes), parts["train"], parts["test"])


@register_listing("oxford_pets")
def list_oxford_pets(data_root: Path, folder: str = "oxford-iiit-pet") -> Listing:
    """Oxford-IIIT Pets: 37 breeds, 3,680 trainval / 3,669 test images."""
    source, layout = "https://www.robots.ox.ac.uk/~vgg/data/pets/", "images/ and annotations/{trainval,test}.txt"
    root = _root(data_root, folder, layout, source)
    parts, breeds = {}, {}
    for split in ("trainval", "test"):
        rows = [line.split() for line in read_lines(root / "annotations" / f"{split}.txt", layout, source)]
        labels = np.array([int(r[1]) - 1 for r in rows], dtype=np.int64)
        breeds.update({int(r[1]) - 1: r[0].rsplit("_", 1)[0] for r in rows})
        parts[split] = Part(labels, tuple(root / "images" / f"{r[0]}.jpg" for r in rows), root / "images")
    if sorted(breeds) != list(range(len(breeds))):
        raise DataError(f"{root / 'annotations'}: class ids {sorted(breeds)[:5]}... are not 1..{len(breeds)}")
    # torchvision's names: the image-id prefix in title case ("american_bulldog" -> "American Bulldog")
    names = tuple(" ".join(w.title() for w in breeds[i].split("_")) for i in range(len(breeds)))
    return Listing("oxford_pets", names, parts["trainval"], parts["test"])


@register_listing("sun397")
def list_sun397(data_root: Path, folder: str = "SUN397", split: str = "random") -> Listing:
    """SUN397: 397 scene classes, 108,754 images; ZSCL's 80/20 split, or ``partitions`` (Training/Testing_01)."""
    source, layout = "https://vision.princeton.edu/projects/2010/SUN/", "ClassName.txt and <l>/<class>/sun_*.jpg"
    root = _root(data_root, folder, layout, source)
    classes = [c[3:].strip() for c in read_lines(root / "ClassName.txt", layout, source)]  # "/a/abbey" -> "abbey"
    names = tuple(c.replace("_", " ") for c in classes)
    if split == "partitions":
        parts = {}
        for part, stem in (("train", "Training_01"), ("test", "Testing_01")):
            path = root / "Partitions" / f"{stem}.txt"
            rows = [r.lstrip("/") for r in read_lines(path, "Partitions/Training_01.txt, Testing_01.txt", source)]
            labels = _labels(["/".join(r.split("/")[1:-1]) for r in rows], classes, path)
            parts[part] = Part(labels, tuple(root / r for r in rows), root)
        return Listing("sun397", names, parts["train"], parts["test"])
    if split != "random":
        raise DataError(f"sun397: split must be 'random' (ZSCL's 80/20) or 'partitions', got {split!r}")
    files = sorted(p for p in root.rglob("sun_*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{root} has no sun_*.jpg images; expected {layout} (published at {source})")
    labels = _labels(["/".join(p.relative_to(root).parts[1:-1]) for p in files], classes, root)
    train, test = random_split(len(files))
    return Listing("sun397", names, split_files(files, labels, root, train), split_files(files, labels, root, test))
