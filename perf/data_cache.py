"""Epoch time: decoding JPEGs every epoch vs. the decode-once cache with batched augmentation.

Generates a folder dataset of ``--images`` 224x224 JPEGs (smooth random scenes, so they
compress and decode like photos), then times training epochs of

- ``jpeg``: torchvision ``ImageFolder`` + ``DataLoader`` (``--workers`` processes) with the
  standard training transform ``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``, ``ToTensor()``;
- ``cache``: what a folder reader and a stream do: :func:`fluxbench.benchmarks.folder_cache.decode_images`
  (the 224 evaluation view and, for ``train_crops: full``, the whole-image crop source at
  ``--crop-source-size``; built once, timed separately) as memory maps, loaded to the ``--device``
  once per experience, then ``Experience.train_batches`` with the same recipe through
  :func:`fluxbench.streams.transforms.build_batch_transform` (crops on each file's geometry).

Both deliver float batches in [0, 1] on the device. The script also prints the cache's size on
disk (and so in memory, once loaded) with and without the crop source, measured and for ImageNet-R.
Usage::

    .venv/bin/python perf/data_cache.py                      # 2,000 images, 2 epochs each
    .venv/bin/python perf/data_cache.py --images 4000 --device cuda --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fluxbench.allocator import keep_freed_memory

Timing = tuple[float, float]  # (wall seconds, CPU seconds) of one epoch


def make_images(root: Path, count: int, classes: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs in ``root/<class>/``: upsampled low-resolution noise plus fine grain."""
    rng = np.random.default_rng(seed)
    files = []
    for index in range(count):
        folder = root / f"n{index % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        path = folder / f"img_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        files.append(path)
    return files


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def jpeg_epochs(root: Path, epochs: int, batch_size: int, workers: int, device: torch.device) -> list[Timing]:
    """(wall, CPU) seconds per epoch with torchvision's ImageFolder pipeline (decode + augment, every epoch)."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda",
    )
    times = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), cpu_seconds()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _sync(device)
        times.append((time.perf_counter() - start, cpu_seconds() - cpu))
    return times


def experience(data, device: torch.device, augment: bool):
    """One experience over all of ``data`` with the ImageNet-R recipe, its tensors loaded (timed: wall, CPU)."""
    from fluxbench.streams.experience import Experience
    from fluxbench.streams.transforms import build_batch_transform

    recipe = {"random_resized_crop": {"size": 224}, "horizontal_flip": 0.5}
    exp = Experience(0, data, data, tuple(range(len(data.classes))), len(data.classes),
                     train_transform=build_batch_transform(recipe if augment else None))
    start, cpu = time.perf_counter(), cpu_seconds()
    exp.uint8_tensors("train", device)
    if augment:
        exp.crop_tensors(device)
    _sync(device)
    return exp, (time.perf_counter() - start, cpu_seconds() - cpu)


def cache_epochs(exp, epochs: int, batch_size: int, device: torch.device) -> list[Timing]:
    """(wall, CPU) seconds per epoch of ``exp.train_batches`` (tensors already on ``device``)."""
    times = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), cpu_seconds()
        for _ in exp.train_batches(batch_size, device):
            pass
        _sync(device)
        times.append((time.perf_counter() - start, cpu_seconds() - cpu))
    return times


def cache_sizes(paths: dict[str, Path], images: int, side: int, source: int) -> list[str]:
    """Lines on the cache's size: measured here, and for ImageNet-R's 24,000 training images."""
    measured = {name: path.stat().st_size for name, path in paths.items()}
    centre, whole = measured["centre"], measured["whole"] + measured["sizes"]
    train = 24_000  # 80% of ImageNet-R's 30,000
    per_centre, per_whole = side * side * 3, source * source * 3 + 16
    return [
        f"cache on disk here ({images} images): centre view {centre / 2**20:.1f} MiB (train_crops=centre, as before); "
        f"+ crop source {whole / 2**20:.1f} MiB = {(centre + whole) / 2**20:.1f} MiB "
        f"({(centre + whole) / centre:.2f}x) with train_crops=full",
        f"ImageNet-R train ({train} images): {train * per_centre / 2**30:.2f} GiB centre only, "
        f"{train * (per_centre + per_whole) / 2**30:.2f} GiB with the {source}px crop source "
        f"(same in memory once an experience is loaded: the experience's share of it)",
    ]


def build_cache(files: list[Path], source_size: int):
    """The reader's caches for ``files`` (evaluation view, crop source, sizes): the dataset, build and open
    seconds, and the cache files."""
    from fluxbench.benchmarks.base import CropSource, ImageDataset
    from fluxbench.benchmarks.folder_cache import ResizeRule, WholeImageRule, decode_images, image_sizes
    from fluxbench.cache import cache_dir

    rule, whole = ResizeRule(224, crop_pct=1.0), WholeImageRule(source_size)  # square files: resize, no crop
    start = time.perf_counter()
    built = decode_images(files, rule, name="perf"), decode_images(files, whole, name="perf-whole")
    image_sizes(files, name="perf")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    centre, source = decode_images(files, rule, name="perf"), decode_images(files, whole, name="perf-whole")
    sizes = image_sizes(files, name="perf")
    open_s = time.perf_counter() - start
    assert not any(b.hit for b in built) and centre.hit and source.hit
    labels = np.array([int(f.parent.name[1:]) for f in files])
    data = ImageDataset(centre.images, labels, np.array([str(f) for f in files]), "perf", (),
                        CropSource(source.images, sizes))
    paths = {"centre": centre.path, "whole": source.path,
             "sizes": next(cache_dir("data").glob("perf-sizes-*.npy"))}
    return data, build_s, open_s, paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--source-size", type=int, default=224, help="side of the generated JPEGs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the best one is reported")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop-source-size", type=int, default=256, help="side of the whole-image crop source")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (jpeg)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--csv", type=Path, help="also write the figures to this CSV file")
    parser.add_argument("--allocator", choices=["fluxbench", "default"], default="fluxbench",
                        help="fluxbench: the process keeps freed memory, as `fluxbench run` does (both pipelines, "
                             "the DataLoader's forked workers included); default: glibc's own thresholds")
    args = parser.parse_args()
    device = torch.device(args.device)
    kept = args.allocator == "fluxbench" and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="fluxbench-perf-") as tmp:
        os.environ["FLUXBENCH_CACHE"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "folder"
        start = time.perf_counter()
        files = make_images(root, args.images, args.classes, args.source_size)
        side = args.source_size
        print(f"generated {len(files)} {side}x{side} JPEGs in {time.perf_counter() - start:.1f} s "
              f"({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB); device {device}, "
              f"{torch.get_num_threads()} torch threads, {args.workers} DataLoader workers, "
              f"allocator {'keeps freed memory' if kept else 'glibc default'}")

        torch.manual_seed(0)
        jpeg = jpeg_epochs(root, args.epochs, args.batch_size, args.workers, device)
        files = sorted(files)
        data, build_s, open_s, paths = build_cache(files, args.crop_source_size)
        plain_exp, _ = experience(data, device, augment=False)
        plain = cache_epochs(plain_exp, args.epochs, args.batch_size, device)
        full_exp, load = experience(data, device, augment=True)
        full = cache_epochs(full_exp, args.epochs, args.batch_size, device)
        centre_exp, _ = experience(replace(data, crops=None), device, augment=True)
        centre = cache_epochs(centre_exp, args.epochs, args.batch_size, device)
        sizes = cache_sizes(paths, len(files), 224, args.crop_source_size)

    # best epoch by wall time (the machine's other load only ever adds time); CPU seconds count the work
    # whatever the load (the DataLoader workers' included)
    best = {name: min(runs) for name, runs in (("jpeg", jpeg), ("plain", plain), ("full", full), ("centre", centre))}
    rows = [
        ("jpeg epoch (ImageFolder + DataLoader)", *best["jpeg"]),
        ("cache build (once, first use)", build_s, float("nan")),
        ("cache open (later runs: key + mmap)", open_s, float("nan")),
        ("experience load (once: mmap -> device)", *load),
        ("cache epoch, no augmentation", *best["plain"]),
        ("cache epoch, crops of the whole image", *best["full"]),
        ("cache epoch, crops of the centre view", *best["centre"]),
    ]
    print(f"{'':<40} {'wall s':>8} {'img/s':>9} {'CPU s':>8}")
    for label, wall, cpu in rows:
        print(f"{label:<40} {wall:8.2f} {args.images / wall:9.0f} {cpu:8.2f}")
    jpeg_wall, jpeg_cpu = best["jpeg"]
    for name in ("full", "centre"):
        wall, cpu = best[name]
        print(f"speed-up per epoch (train_crops={name}): {jpeg_wall / wall:.1f}x wall, {jpeg_cpu / cpu:.1f}x CPU")
    print(f"(wall per epoch: jpeg {[round(w, 2) for w, _ in jpeg]}, cache {[round(w, 2) for w, _ in full]}; "
          f"load average {os.getloadavg()[0]:.1f})")
    print("\n".join(sizes))
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["what", "wall_seconds", "cpu_seconds", "images", "device"])
            writer.writerows([(label, f"{w:.4f}", f"{c:.4f}", args.images, device) for label, w, c in rows])


if __name__ == "__main__":
    main()
