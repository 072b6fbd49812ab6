"""Stanford Cars (196 models; 8,144 train / 8,041 test images) in its devkit layout or the common folder form.

Devkit layout (what torchvision's ``StanfordCars`` reads; ZSCL's train / test split)::

    <data_root>/stanford_cars/devkit/cars_meta.mat               # class_names, index = class - 1
    <data_root>/stanford_cars/devkit/cars_train_annos.mat        # annotations: ..., class (1-based), fname
    <data_root>/stanford_cars/cars_test_annos_withlabels.mat     # the same for the test images
    <data_root>/stanford_cars/cars_train/<fname>, cars_test/<fname>

Folder form (the widely mirrored "by classes folder" copy, since the original site went offline)::

    <data_root>/stanford_cars/[car_data/[car_data/]]{train,test}/<class name>/<image>.jpg
    <data_root>/stanford_cars/names.csv                           # optional: class names in devkit order

Folder names are class names with ``/`` written ``-``; with ``names.csv`` labels follow its order (the devkit's),
without it the sorted folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluxbench.benchmarks.imagefolder import class_folders, list_images
from fluxbench.benchmarks.listing import Listing, Part, need, read_lines, register_listing
from fluxbench.errors import DataError

SOURCE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (mirrored on Kaggle and Hugging Face)"
LAYOUT = ("devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/ and "
          "cars_test/, or {train,test}/<class name>/")


def _annotations(path: Path) -> tuple[list[str], np.ndarray]:
    from scipy.io import loadmat

    annos = np.atleast_1d(loadmat(need(path, LAYOUT, SOURCE), squeeze_me=True)["annotations"])
    try:
        return [str(a["fname"]) for a in annos], np.array([int(a["class"]) - 1 for a in annos], dtype=np.int64)
    except (ValueError, IndexError, KeyError):
        raise DataError(f"{path}: 'annotations' must be a struct array with fields class and fname") from None


def _devkit(root: Path) -> Listing:
    from scipy.io import loadmat

    meta = loadmat(need(root / "devkit" / "cars_meta.mat", LAYOUT, SOURCE), squeeze_me=True)
    classes = tuple(str(c) for c in np.atleast_1d(meta["class_names"]))
    parts = {}
    for split, annos, folder in (("train", root / "devkit" / "cars_train_annos.mat", root / "cars_train"),
                                 ("test", root / "cars_test_annos_withlabels.mat", root / "cars_test")):
        names, labels = _annotations(annos)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{annos}: classes outside 1..{len(classes)}")
        parts[split] = Part(labels, tuple(folder / n for n in names), folder)
    return Listing("stanford_cars", classes, parts["train"], parts["test"])


def _folders(root: Path) -> Listing:
    for top in (root / "car_data" / "car_data", root / "car_data", root):
        if (top / "train").is_dir() and (top / "test").is_dir():
            break
    else:
        raise DataError(f"{root} has neither devkit/ nor train/ and test/ class folders; expected {LAYOUT} "
                        f"(published at {SOURCE})")
    folders = class_folders(top / "train")
    names = tuple(read_lines(root / "names.csv", LAYOUT, SOURCE)) if (root / "names.csv").is_file() else ()
    if names:
        folders = [n.replace("/", "-") for n in names]
        missing = sorted(set(folders) - set(class_folders(top / "train")))
        if missing:
            raise DataError(f"{top / 'train'} lacks class folders {missing[:3]} that {root / 'names.csv'} lists")
    parts = {}
    for split in ("train", "test"):
        files, labels = list_images(top / split, folders)
        parts[split] = Part(labels, tuple(files), top / split)
    return Listing("stanford_cars", names or tuple(folders), parts["train"], parts["test"])


@register_listing("stanford_cars")
def list_stanford_cars(data_root: Path, folder: str = "stanford_cars") -> Listing:
    """Stanford Cars: 196 classes, the devkit's train / test split (or the folder form's)."""
    root = need(data_root / folder, f"{folder}/ holding {LAYOUT}", SOURCE)
    return _devkit(root) if (root / "devkit").is_dir() else _folders(root)
