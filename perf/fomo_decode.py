"""Images/s of one pass over a mini-FiF task: decoding its JPEGs vs. reading the decode-once cache.

Writes ``--datasets`` ImageFolder datasets of photo-like JPEGs (``--size`` px on the short side), builds a
mini-FiF from them with :func:`fluxbench.fomo.mini.build_mini_fif` (the released layout), cuts its stream into
``--tasks`` tasks and times one pass over task 0's training images, in one process:

- ``jpeg``: every file of the task decoded and resized (Resize + CenterCrop to ``--image-size``) with PIL,
  ``--workers`` threads, as :func:`fluxbench.benchmarks.folder_cache.decode_image` does;
- ``cache``: :func:`fluxbench.fomo.streams.task_data` on a fresh reader whose dataset splits are already in
  the decode-once cache (memory-mapped ``.npy``): what a later run pays (cache-key check of every file, then
  the gather); and once more on the same reader, what a later epoch pays (the gather only).

Building the cache (the first pass) is timed and printed apart. Usage::

    .venv/bin/python perf/fomo_decode.py                        # 2 datasets x 10 classes x 40 images, 224 px
    .venv/bin/python perf/fomo_decode.py --per-class 100 --size 384
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, classes: int, per_class: int, size: int, seed: int) -> None:
    """``root/c<k>/img_<i>.jpg``: upsampled coarse noise plus grain, 4:3, so JPEGs decode like photos."""
    rng = np.random.default_rng(seed)
    shape = (size, size * 4 // 3)
    for k in range(classes):
        folder = root / f"c{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(shape[::-1],
                                                                                           Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (*shape, 3), dtype=np.int16)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img_{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="short side of the written JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="decoded size (Resize + CenterCrop)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fomo-decode-") as tmp:
        os.environ["FLUXBENCH_CACHE"] = str(Path(tmp) / "cache")  # a cold cache of our own, never the user's
        from fluxbench.benchmarks.folder_cache import ResizeRule, decode_image
        from fluxbench.fomo.info import FifReader
        from fluxbench.fomo.mini import MiniSource, build_mini_fif
        from fluxbench.fomo.streams import stream_from_manifest, task_data

        sources = []
        for d in range(args.datasets):
            make_folder(Path(tmp) / f"src{d}", args.classes, args.per_class, args.size, seed=d)
            sources.append(MiniSource(f"SET{d}", Path(tmp) / f"src{d}"))
        fif = build_mini_fif(sources, Path(tmp) / "fif", num_tasks=args.tasks)
        rule = ResizeRule(args.image_size, 1.0)
        reader = FifReader.from_root(fif.root, rule=rule)
        stream = stream_from_manifest(reader, fif.manifest)
        task = stream.tasks[0]
        index = {str(i): f for name in task.datasets
                 for i, f in zip(reader.split(name, "train").ids, reader.split(name, "train").files())}
        files = [index[i] for i in task.train_ids]

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            decoded = list(pool.map(lambda f: decode_image(f, rule), files))
        jpeg_s = time.perf_counter() - start

        start = time.perf_counter()
        for name in task.datasets:  # the first pass: decode every split the task draws from, into the cache
            reader.images(name, "train")
        build_s = time.perf_counter() - start

        fresh = FifReader.from_root(fif.root, rule=rule)  # a new run: nothing decoded in memory, cache on disk
        start = time.perf_counter()
        for name in task.datasets:  # reading the info JSONs (and checking the files exist) is not decoding
            fresh.split(name, "train")
        info_s = time.perf_counter() - start
        start = time.perf_counter()
        data = task_data(fresh, stream, task, "train")
        cache_s = time.perf_counter() - start
        again_s = float("inf")
        for _ in range(5):  # a later epoch: the memory maps are open; a few ms, so the best of five
            start = time.perf_counter()
            task_data(fresh, stream, task, "train")
            again_s = min(again_s, time.perf_counter() - start)
        assert np.array_equal(data.images, np.stack(decoded)), "cache and JPEG pass disagree"

    n = len(files)
    print(f"task 0: {n} images from {len(task.datasets)} dataset(s), {args.size} px JPEGs -> {args.image_size} px, "
          f"{args.workers} decode thread(s)")
    print(f"jpeg   {n / jpeg_s:10.0f} images/s  ({jpeg_s:.3f} s)")
    print(f"cache  {n / cache_s:10.0f} images/s  ({cache_s:.3f} s; building it took {build_s:.3f} s for "
          f"{sum(len(reader.split(d, 'train')) for d in task.datasets)} images)")
    print(f"cache, a later epoch {n / again_s:10.0f} images/s  ({again_s:.3f} s; the first pass above includes "
          "checking the cache key: every file's path, size and mtime)")
    print(f"(reading the info JSONs of a fresh reader, in neither pass: {info_s:.3f} s)")
    print(f"ratio  cache/jpeg = {jpeg_s / cache_s:.1f}x (a run's first pass), {jpeg_s / again_s:.0f}x (a later epoch)")


if __name__ == "__main__":
    main()
