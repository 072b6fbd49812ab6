"""Corruption engine against ``imagecorruptions`` 1.1.2, side by side in one process, on one CPU thread.

Both sides get the same uint8 photos (random crops of scikit-learn's two bundled photos, at 224 px and
at 32 px, the latter the 224 px crops box-shrunk) at the same severities, and both are timed uint8 in,
uint8 out: ``imagecorruptions.corrupt`` one image per call, as it works, on the first ``--reference-images``
(its cost per image does not depend on how many); fluxbench's
:func:`~fluxbench.streams.corruptions.corrupt_pixels` (what :func:`~fluxbench.streams.corruptions.corrupt_dataset`
runs: the uint8 -> float -> uint8 conversions included, or a corruption's own uint8 path) on ``--images``
in batches. Both use the ImageNet-C
table (``imagecorruptions`` has no other), so each pair does the same work: speed-up is the
reference's milliseconds per image over ours. Each side has one untimed warm-up call per
corruption. ``overall`` is total reference time over total fluxbench time (every corruption an equal
share of images), for the 15 standard corruptions and for all 19. Times are the process's CPU seconds
(``time.process_time``): with one thread that is the work done, and it stays put on a shared, loaded machine
where wall time does not.

``imagecorruptions`` stays out of the project's environment: install it and its extra dependencies
into a folder of their own and pass it with ``--reference-path``::

    .venv/bin/pip install --no-deps --target /tmp/perf-ic imagecorruptions==1.1.2 \\
        opencv-python-headless scikit-image imageio tifffile lazy_loader networkx
    .venv/bin/python perf/corruptions.py --reference-path /tmp/perf-ic
    .venv/bin/python perf/corruptions.py --reference-path /tmp/perf-ic --sizes 224 --only jpeg_compression,pixelate

It was written for older NumPy/SciPy/scikit-image; :func:`load_reference` patches its own copy at
import (nothing on disk is edited). Without it, only fluxbench's img/s are printed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU thread for both sides; must precede the numpy / torch imports

import argparse  # noqa: E402
import csv  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from fluxbench.streams.corruptions import CORRUPTIONS, corrupt_pixels, list_corruptions  # noqa: E402


def photos(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` random 224 px crops of the bundled photos, box-resized to ``size``: ``(N, size, size, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    sources = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    crops = []
    for index in range(count):
        source = sources[index % 2]
        top, left = rng.integers(0, source.shape[0] - 224 + 1), rng.integers(0, source.shape[1] - 224 + 1)
        crop = source[top:top + 224, left:left + 224]
        crops.append(crop if size == 224 else np.asarray(Image.fromarray(crop).resize((size, size), Image.BOX)))
    return np.stack(crops)


def load_reference(path: str) -> types.ModuleType | None:
    """``imagecorruptions`` from ``path`` with the patches it needs on current libraries, or None if absent."""
    if path:
        sys.path.insert(0, path)
    if "pkg_resources" not in sys.modules:  # setuptools no longer ships it; only resource_filename is used
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda package, name: str(Path(sys.modules[package].__file__).parent / name)
        sys.modules["pkg_resources"] = stub
    try:
        import cv2
        import imagecorruptions
        from imagecorruptions import corruptions as module
    except ImportError as error:
        print(f"imagecorruptions not importable ({error}): fluxbench alone")
        return None
    cv2.setNumThreads(1)
    numpy_compat = types.ModuleType("numpy_compat")  # np.float_ left NumPy 2.0; give the module its own alias
    numpy_compat.__dict__.update(np.__dict__)
    numpy_compat.float_ = np.float64
    module.np = numpy_compat
    gaussian = module.gaussian

    def gaussian_compat(image, *args, multichannel=None, **kwargs):  # scikit-image 0.19 renamed multichannel
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    module.gaussian = gaussian_compat
    return imagecorruptions


def time_ours(pixels: np.ndarray, name: str, severities: list[int], batch_size: int, device: torch.device) -> float:
    """Seconds for :func:`corrupt_pixels` (uint8 in and out, as corrupt_dataset) on every image at every severity."""
    def run(images: np.ndarray, severity: int, seed: int) -> np.ndarray:
        return corrupt_pixels(images, name, severity, seed, "imagenet", device)

    run(pixels[:2], severities[-1], 0)  # warm-up: caches, texture bank, kernels
    start = time.process_time()
    for severity in severities:
        for first in range(0, len(pixels), batch_size):
            run(pixels[first:first + batch_size], severity, first)
    return time.process_time() - start


def time_reference(module: types.ModuleType, pixels: np.ndarray, name: str, severities: list[int]) -> float:
    """Seconds for ``imagecorruptions.corrupt`` on every image at every severity (one image per call)."""
    np.random.seed(0)
    module.corrupt(pixels[0], corruption_name=name, severity=severities[-1])  # warm-up
    start = time.process_time()
    for severity in severities:
        for image in pixels:
            module.corrupt(image, corruption_name=name, severity=severity)
    return time.process_time() - start


def measure(args: argparse.Namespace, size: int, count: int, ref_count: int,
            reference: types.ModuleType | None) -> list[dict]:
    severities = [int(s) for s in args.severities.split(",")]
    names = args.only.split(",") if args.only else list_corruptions()
    pixels = photos(count, size)
    device = torch.device(args.device)
    print(f"\n{size}x{size}: fluxbench {count} images in batches of {args.batch_size} on {device}, imagecorruptions "
          f"the first {ref_count}; severities {severities}, ImageNet-C parameters, one CPU thread")
    print(f"{'corruption':20s} {'img/s':>9s} {'ms/img':>8s} {'ref img/s':>10s} {'ref ms/img':>10s} {'speed-up':>9s}")
    rows = []
    for name in names:
        seconds = time_ours(pixels, name, severities, args.batch_size, device)
        n = len(pixels) * len(severities)
        row = {"size": size, "corruption": name, "images": n, "seconds": seconds, "ms_per_img": 1000 * seconds / n}
        ref = f"{'-':>10s} {'-':>10s} {'-':>9s}"
        if reference is not None:
            ref_seconds = time_reference(reference, pixels[:ref_count], name, severities)
            row["ref_ms_per_img"] = 1000 * ref_seconds / (ref_count * len(severities))
            row["ref_seconds"] = row["ref_ms_per_img"] * n / 1000  # per-image cost, scaled to our image count
            row["speedup"] = row["ref_ms_per_img"] / row["ms_per_img"]
            ref = f"{1000 / row['ref_ms_per_img']:10.1f} {row['ref_ms_per_img']:10.2f} {row['speedup']:8.2f}x"
        print(f"{name:20s} {1000 / row['ms_per_img']:9.1f} {row['ms_per_img']:8.2f} {ref}", flush=True)
        rows.append(row)
    for label, subset in (("overall (15)", [r for r in rows if r["corruption"] in CORRUPTIONS]), ("overall", rows)):
        ours = sum(r["seconds"] for r in subset)
        if not subset or ours == 0:
            continue
        line = f"{label:20s} {sum(r['images'] for r in subset) / ours:9.1f}"
        if reference is not None:
            line += f"   speed-up {sum(r['ref_seconds'] for r in subset) / ours:.1f}x"
        print(line)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="224,32", help="image sizes, each with its own image count")
    parser.add_argument("--images", default="64,256", help="fluxbench's images per size")
    parser.add_argument("--reference-images", default="8,32",
                        help="imagecorruptions' images per size: the first of fluxbench's (it is per image, and slow)")
    parser.add_argument("--batch-size", type=int, default=64, help="fluxbench's batch (corrupt_dataset's is 256)")
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--only", default="", help="comma-separated corruptions (default: all registered)")
    parser.add_argument("--device", default="cpu", help="fluxbench's device; the reference always runs on CPU")
    parser.add_argument("--reference-path", default="", help="folder holding imagecorruptions and its dependencies")
    parser.add_argument("--csv", default="")
    args = parser.parse_args()

    torch.set_num_threads(1)
    reference = load_reference(args.reference_path)
    rows = []
    for size, count, ref_count in zip(args.sizes.split(","), args.images.split(","), args.reference_images.split(",")):
        rows += measure(args, int(size), int(count), min(int(ref_count), int(count)), reference)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
