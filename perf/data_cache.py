"""Epoch time: decoding JPEGs every epoch vs. the decode-once cache with batched augmentation.

Generates a folder dataset of ``--images`` 224x224 JPEGs (smooth random scenes, so they
compress and decode like photos), then times training epochs of

- ``jpeg``: torchvision ``ImageFolder`` + ``DataLoader`` (``--workers`` processes) with the
  standard training transform ``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``, ``ToTensor()``;
- ``cache``: :func:`fluxbench.benchmarks.folder_cache.decode_images` (built once, timed
  separately) read as a memory map, batches indexed from it, then
  :func:`fluxbench.streams.transforms.build_batch_transform` on the ``--device``.

Both deliver float batches in [0, 1] on the device. Usage::

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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def cache_epochs(
    images: np.ndarray, epochs: int, batch_size: int, device: torch.device, augment: bool
) -> list[Timing]:
    """(wall, CPU) seconds per epoch reading the uint8 memory map and (``augment``) augmenting batches on ``device``."""
    from fluxbench.streams.transforms import build_batch_transform

    recipe = {"random_resized_crop": {"size": 224}, "horizontal_flip": 0.5}
    transform = build_batch_transform(recipe if augment else None)
    times = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), cpu_seconds()
        order = torch.randperm(len(images)).numpy()
        for lo in range(0, len(order), batch_size):
            index = np.sort(order[lo:lo + batch_size])  # sorted reads are sequential on disk
            batch = torch.from_numpy(images[index]).to(device, non_blocking=True)
            x = batch.permute(0, 3, 1, 2).float().div_(255.0)
            if transform is not None:
                x = transform(x)
        _sync(device)
        times.append((time.perf_counter() - start, cpu_seconds() - cpu))
    return times


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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (jpeg)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--csv", type=Path, help="also write the figures to this CSV file")
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="fluxbench-perf-") as tmp:
        os.environ["FLUXBENCH_CACHE"] = str(Path(tmp) / "cache")
        from fluxbench.benchmarks.folder_cache import ResizeRule, decode_images

        root = Path(tmp) / "folder"
        start = time.perf_counter()
        files = make_images(root, args.images, args.classes, args.source_size)
        side = args.source_size
        print(f"generated {len(files)} {side}x{side} JPEGs in {time.perf_counter() - start:.1f} s "
              f"({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB); device {device}, "
              f"{torch.get_num_threads()} torch threads, {args.workers} DataLoader workers")

        torch.manual_seed(0)
        jpeg = jpeg_epochs(root, args.epochs, args.batch_size, args.workers, device)
        files = sorted(files)
        rule = ResizeRule(224, crop_pct=1.0)  # square files: resize to 224, no crop
        start = time.perf_counter()
        built = decode_images(files, rule, name="perf")
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        again = decode_images(files, rule, name="perf")
        open_s = time.perf_counter() - start
        assert not built.hit and again.hit
        plain = cache_epochs(again.images, args.epochs, args.batch_size, device, augment=False)
        cached = cache_epochs(again.images, args.epochs, args.batch_size, device, augment=True)

    # best epoch by wall time (the machine's other load only ever adds time); CPU seconds count the work
    # whatever the load (the DataLoader workers' included)
    best = {name: min(runs) for name, runs in (("jpeg", jpeg), ("plain", plain), ("cache", cached))}
    rows = [
        ("jpeg epoch (ImageFolder + DataLoader)", *best["jpeg"]),
        ("cache build (once, first use)", build_s, float("nan")),
        ("cache open (later runs: key + mmap)", open_s, float("nan")),
        ("cache epoch, no augmentation", *best["plain"]),
        ("cache epoch (mmap + batched augment)", *best["cache"]),
    ]
    print(f"{'':<40} {'wall s':>8} {'img/s':>9} {'CPU s':>8}")
    for label, wall, cpu in rows:
        print(f"{label:<40} {wall:8.2f} {args.images / wall:9.0f} {cpu:8.2f}")
    (jpeg_wall, jpeg_cpu), (cache_wall, cache_cpu) = best["jpeg"], best["cache"]
    print(f"speed-up per epoch: {jpeg_wall / cache_wall:.1f}x wall, {jpeg_cpu / cache_cpu:.1f}x CPU   "
          f"(wall per epoch: jpeg {[round(w, 2) for w, _ in jpeg]}, cache {[round(w, 2) for w, _ in cached]}; "
          f"load average {os.getloadavg()[0]:.1f})")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["what", "wall_seconds", "cpu_seconds", "images", "device"])
            writer.writerows([(label, f"{w:.4f}", f"{c:.4f}", args.images, device) for label, w, c in rows])


if __name__ == "__main__":
    main()
