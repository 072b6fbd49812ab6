"""Training and inference throughput of MOS and LAE beside finetune, on the same backbone and data.

Each method (its YAML defaults, with a common batch size and epoch count) first trains one untimed
experience, so that the timed second one runs in steady state: MOS merges adapters, LAE updates its
offline expert. The second experience is timed per epoch (the loop only: forward, backward, step and
the method's per-step hook); model FLOPs per training image come from one step under FlopCounterMode, and
MFU is those FLOPs at the measured img/s against the device's bf16 dense peak (``--peak-tflops``; known for
H100/H200/A100, none on CPU); MOS's after-task work (class statistics, classifier alignment, prototypes)
is timed separately, and so is inference over the test images (MOS retrieval runs several adapters,
LAE two experts). LAE's epochs are timed with the PET trainable (``num_freeze_epochs=0``); a warm-up
epoch with the PET frozen is cheaper (no backward through the backbone). The ratio to finetune is the
method's own cost. Methods run in interleaved rounds (medians reported), so a slow spell on a shared
machine hits all of them alike. Images are random uint8: throughput does not depend on content::

    python perf/methods.py                              # tiny ViT (random init) on CPU
    python perf/methods.py --vit-b16 --amp              # ViT-B/16 (random init), bf16 autocast, on a GPU
    python perf/methods.py --vit-b16 --amp --batch 128 --compile inductor   # torch.compile'd step, MFU
    python perf/methods.py --csv out.csv --methods mos lae-adapter
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
from typing import Any

import numpy as np
import timm
import torch

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.methods import MethodContext, create_method
from fluxbench.methods.registry import method_config
from fluxbench.streams.experience import Experience

# bf16 dense tensor-core peak, TFLOP/s (vendor datasheets, without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "finetune": ("finetune", {}),
    "mos": ("mos", {}),
    "mos-faithful": ("mos", {"faithful_to_code": True}),
    "lae-adapter": ("lae", {"pet": "adapter", "num_freeze_epochs": 0}),
    "lae-lora": ("lae", {"pet": "lora", "num_freeze_epochs": 0}),
    "lae-prefix": ("lae", {"pet": "prefix", "num_freeze_epochs": 0}),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-b16", action="store_true", help="vit_base_patch16_224, random init, 224x224 images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--images", type=int, default=None, help="training images per experience "
                        "(default: 480 tiny ViT, 1536 ViT-B/16)")
    parser.add_argument("--batch", type=int, default=48, help="batch size for every method (MOS's CIFAR value)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs; the median is reported")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the methods; medians reported")
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), help=f"from: {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", default="none", help="torch.compile backend for the training step (inductor)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU "
                        "(default: from the GPU's name)")
    parser.add_argument("--csv", default=None, help="also write the results here")
    args = parser.parse_args()
    args.images = args.images or (1536 if args.vit_b16 else 480)
    return args


def make_backbone_builder(args: argparse.Namespace):
    """A function returning fresh copies of one randomly initialised backbone."""
    torch.manual_seed(0)
    if args.vit_b16:
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        base = FeatureBackbone(model, model.num_features)  # raw [0, 1] pixels, as MOS and LAE feed ViT-B
        size = 224
    else:
        from fluxbench.backbones.tiny_vit import vit_digits_patch2

        model = vit_digits_patch2(num_classes=0)
        base = FeatureBackbone(model, model.num_features, (0.5,) * 3, (0.5,) * 3)
        size = 8
    return (lambda: copy.deepcopy(base)), size


def random_part(rng: np.random.Generator, n: int, size: int, classes: tuple[int, ...], name: str) -> ImageDataset:
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.asarray(classes)[np.arange(n) % len(classes)]
    return ImageDataset(images, labels, np.arange(n), name)


def make_stream(args: argparse.Namespace, size: int, classes_per_exp: int = 10) -> list[Experience]:
    """Two experiences of ``classes_per_exp`` classes each, random images."""
    rng = np.random.default_rng(0)
    stream = []
    for i in range(2):
        classes = tuple(range(i * classes_per_exp, (i + 1) * classes_per_exp))
        train = random_part(rng, args.images, size, classes, f"random/train{i}")
        test = random_part(rng, args.images // 4, size, classes, f"random/test{i}")
        stream.append(Experience(i, train, test, classes, (i + 1) * classes_per_exp))
    return stream


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def instrument(method: Any, device: torch.device) -> dict[str, list]:
    """Record epoch boundaries, images per epoch and the after-task time through the method's own hooks."""
    marks: dict[str, list] = {"epoch_start": [], "images": [], "after": []}
    before_epoch, batches, after_experience = method.before_epoch, method.training_batches, method.after_experience

    def timed_before_epoch(exp, epoch):
        sync(device)
        marks["epoch_start"].append(time.perf_counter())
        before_epoch(exp, epoch)

    def counted_batches(exp):
        marks["images"].append(0)
        for x, y in batches(exp):
            marks["images"][-1] += len(y)
            yield x, y

    def timed_after_experience(exp):
        sync(device)
        start = time.perf_counter()
        after_experience(exp)
        sync(device)
        marks["after"].append((start, time.perf_counter()))

    method.before_epoch, method.training_batches = timed_before_epoch, counted_batches
    method.after_experience = timed_after_experience
    return marks


def measure(name: str, args: argparse.Namespace, build, stream: list[Experience]) -> dict[str, Any]:
    method_name, overrides = VARIANTS[name]
    device = torch.device(args.device)
    cfg = method_config(method_name) | {"batch_size": args.batch, "epochs": args.epochs} | overrides
    ctx = MethodContext(build_backbone=build, num_classes=20, device=device, amp=args.amp and device.type == "cuda",
                        compile=args.compile)
    torch.manual_seed(0)
    method = create_method(cfg, ctx)
    method.train_experience(stream[0])  # untimed: the timed experience is a later one
    batches = method.training_batches
    marks = instrument(method, device)
    method.train_experience(stream[1])
    flops = step_flops_per_image(method, stream[1], batches)
    ends = marks["epoch_start"][1:] + [marks["after"][-1][0]]
    speeds = [n / (end - start) for n, start, end in zip(marks["images"], marks["epoch_start"], ends)]
    after_s = marks["after"][-1][1] - marks["after"][-1][0]
    x, _ = stream[1].tensors("test", device)
    method.predict(x[: args.batch])  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(x), args.batch):
        method.predict(x[i:i + args.batch])
    sync(device)
    return dict(method=name, train_img_s=statistics.median(speeds), after_task_s=after_s,
                predict_img_s=len(x) / (time.perf_counter() - start), gflops_per_img=flops / 1e9)


def step_flops_per_image(method: Any, exp: Experience, batches) -> float:
    """Model FLOPs of one training step (forward and backward of the method's own loss) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(batches(exp)))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=method.ctx.amp):
            loss = method.training_loss(x, y, exp)
        loss.backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(y)


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops or not args.device.startswith("cuda"):
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.methods) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from: {', '.join(VARIANTS)}")
    build, size = make_backbone_builder(args)
    stream = make_stream(args, size)
    names = ["finetune", *[m for m in args.methods if m != "finetune"]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(measure(name, args, build, stream))
    rows = [{"method": name, **{k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0] if k != "method"}}
            for name in names]
    base = rows[0]["train_img_s"]
    gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if gpu else f"cpu, {torch.get_num_threads()} threads"
    model = "vit_base_patch16_224" if args.vit_b16 else "vit_digits_patch2 (tiny ViT)"
    peak = peak_tflops(args)
    print(f"{model}, {args.images} training images, batch {args.batch}, {'bf16' if args.amp else 'fp32'}, {device}, "
          f"compile {args.compile}, torch {torch.__version__}, peak {peak or '-'} TFLOP/s")
    print(f"{'method':<24}{'train img/s':>13}{'vs finetune':>13}{'GFLOP/img':>11}{'MFU':>7}{'after-task s':>14}"
          f"{'predict img/s':>15}")
    for row in rows:
        row["train_ratio"] = row["train_img_s"] / base
        row["mfu"] = row["gflops_per_img"] * row["train_img_s"] / (peak * 1e3) if peak else float("nan")
        mfu = f"{row['mfu']:.0%}" if peak else "-"
        print(f"{row['method']:<24}{row['train_img_s']:>13.1f}{row['train_ratio']:>13.2f}{row['gflops_per_img']:>11.3f}"
              f"{mfu:>7}{row['after_task_s']:>14.2f}{row['predict_img_s']:>15.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
