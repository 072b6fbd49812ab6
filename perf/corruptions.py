"""Corruption throughput: images/s per corruption on 224x224 photos, batched, against ``imagecorruptions``.

Times :func:`fluxbench.streams.corruptions.corrupt` on ``--images`` random 224x224 crops of
scikit-learn's two bundled photos, in batches of ``--batch-size``, at each of
``--severities``, after one warm-up call per corruption (frost builds its texture bank
then). Where the ``imagecorruptions`` package is importable it is timed in the same
process on the first ``--reference-images`` images (one image per call, as it works) and
the speed-up is printed; where it is not, the comparison is skipped with a note, and the
overall figure is compared with ``--assumed-reference-ms`` (the issue's ~90 ms per image on
one core; not measured here). Usage::

    .venv/bin/python perf/corruptions.py                               # CPU, 64 images, severities 1-5
    .venv/bin/python perf/corruptions.py --threads 1 --csv corruptions.csv
    .venv/bin/python perf/corruptions.py --device cuda --images 1024 --batch-size 256
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch
from sklearn.datasets import load_sample_image

from fluxbench.streams.corruptions import corrupt, list_corruptions


def photos(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` random ``size`` x ``size`` crops of the bundled photos, ``(N, H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    sources = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    crops = []
    for index in range(count):
        source = sources[index % 2]
        top, left = rng.integers(0, source.shape[0] - size + 1), rng.integers(0, source.shape[1] - size + 1)
        crops.append(source[top:top + size, left:left + size])
    return np.stack(crops)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(x: torch.Tensor, name: str, severities: list[int], batch_size: int, params: str) -> float:
    """Seconds to corrupt every image once at every severity."""
    corrupt(x[:2], name, severities[-1], 0, params)  # warm-up: caches, texture bank, kernels
    sync(x.device)
    start = time.perf_counter()
    for severity in severities:
        for first in range(0, len(x), batch_size):
            corrupt(x[first:first + batch_size], name, severity, first, params)
    sync(x.device)
    return time.perf_counter() - start


def time_reference(module, images: np.ndarray, name: str, severities: list[int]) -> float:
    """Seconds for ``imagecorruptions.corrupt`` on every image at every severity (one image per call)."""
    np.random.seed(0)
    start = time.perf_counter()
    for severity in severities:
        for image in images:
            module.corrupt(image, corruption_name=name, severity=severity)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--params", default="imagenet", choices=["imagenet", "cifar"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--reference-images", type=int, default=8)
    parser.add_argument("--assumed-reference-ms", type=float, default=90.0)
    parser.add_argument("--csv", default="")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    severities = [int(s) for s in args.severities.split(",")]
    pixels = photos(args.images, args.size)
    x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255).contiguous()
    try:
        import imagecorruptions
    except ImportError:
        imagecorruptions = None
        print("imagecorruptions is not installed: skipping the comparison (pip install imagecorruptions to run it)")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.images} images {args.size}x{args.size}, batch {args.batch_size}, severities {severities}, "
          f"params {args.params}, {where}")
    print(f"{'corruption':20s} {'img/s':>9s} {'ms/img':>8s} {'ref img/s':>10s} {'speed-up':>9s}")
    rows, ours_total, ref_total, ref_count = [], 0.0, 0.0, 0
    for name in list_corruptions():
        seconds = time_ours(x, name, severities, args.batch_size, args.params)
        count = len(x) * len(severities)
        ours_total += seconds
        row = {"corruption": name, "img_per_s": count / seconds, "ms_per_img": 1000 * seconds / count}
        if imagecorruptions is not None:
            subset = pixels[: args.reference_images]
            ref_seconds = time_reference(imagecorruptions, subset, name, severities)
            ref_total += ref_seconds
            ref_count = len(subset) * len(severities)
            row["ref_img_per_s"] = ref_count / ref_seconds
            row["speedup"] = row["img_per_s"] / row["ref_img_per_s"]
        rows.append(row)
        ref = f"{row['ref_img_per_s']:10.1f} {row['speedup']:8.1f}x" if "speedup" in row else f"{'-':>10s} {'-':>9s}"
        print(f"{name:20s} {row['img_per_s']:9.1f} {row['ms_per_img']:8.2f} {ref}")

    count = len(x) * len(severities) * len(rows)
    overall = count / ours_total
    print(f"{'overall':20s} {overall:9.1f} {1000 / overall:8.2f}  (all corruptions, equal share)")
    if imagecorruptions is not None:
        ref_overall = ref_count * len(rows) / ref_total
        print(f"imagecorruptions overall {ref_overall:.1f} img/s: speed-up {overall / ref_overall:.1f}x")
    else:
        assumed = 1000 / args.assumed_reference_ms
        print(f"vs an assumed {args.assumed_reference_ms:.0f} ms/image for imagecorruptions ({assumed:.1f} img/s, "
              f"not measured here): {overall / assumed:.1f}x")
    if args.csv:
        write_csv(args.csv, rows)


def write_csv(path: str, rows: list[dict]) -> None:
    fields = [f for f in ("corruption", "img_per_s", "ms_per_img", "ref_img_per_s", "speedup") if f in rows[0]]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
