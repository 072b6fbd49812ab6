"""Training throughput and optimiser-state memory of MIGU and HFT beside finetune, on one backbone and data.

Each method (its YAML defaults, with a common batch size, epoch count and optimiser) trains one untimed
experience, then a timed second one: MIGU masks from the second task on, so its hooks, quantiles and
gradient masking are all in the timed loop; HFT trains half of every block with a fresh optimiser. The
optimiser of the timed experience is kept (a spy on ``make_optimizer``) and its state is measured after
training: HFT should hold about half of finetune's, MIGU as much (it masks gradients, not parameters),
MIGU+LoRA only its adapters' and the head's; HFT with per-epoch re-selection keeps the state of every half
it trained. Methods run in interleaved rounds (medians reported) so that a slow spell on a shared machine hits all
alike; the ratios to finetune are what to read, not the absolute img/s::

    python perf/migu_hft.py                         # tiny ViT (random init) on CPU, SGD with momentum
    python perf/migu_hft.py --optimizer adamw       # two moments per trained parameter
    python perf/migu_hft.py --vit-b16 --amp         # ViT-B/16 (random init), bf16 autocast, on a GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np
import timm
import torch

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.methods import MethodContext, create_method, training
from fluxbench.methods.registry import method_config
from fluxbench.streams.experience import Experience

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "finetune": ("finetune", {}),
    "migu": ("migu", {}),
    "migu-random": ("migu", {"selection": "random"}),
    "migu-strict": ("migu", {"variant": "strict"}),
    "migu-split-qkv": ("migu", {"qkv_quantile": "split"}),
    "migu-lora": ("migu", {"lora_rank": 8}),
    "hft": ("hft", {}),
    "hft-epoch": ("hft", {"reselect": "epoch"}),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-b16", action="store_true", help="vit_base_patch16_224, random init, 224x224 images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--images", type=int, default=None, help="training images per experience "
                        "(default: 960 tiny ViT, 1536 ViT-B/16)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--optimizer", default="sgd", choices=training.OPTIMIZERS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the methods; medians reported")
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), help=f"from: {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    args.images = args.images or (1536 if args.vit_b16 else 960)
    unknown = sorted(set(args.methods) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from: {', '.join(VARIANTS)}")
    return args


def make_backbone_builder(vit_b16: bool):
    """Fresh copies of one randomly initialised backbone, and its input size."""
    torch.manual_seed(0)
    if vit_b16:
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        return (lambda: copy.deepcopy(FeatureBackbone(model, model.num_features))), 224
    from fluxbench.backbones.tiny_vit import vit_digits_patch2

    model = vit_digits_patch2(num_classes=0)
    base = FeatureBackbone(model, model.num_features, (0.5,) * 3, (0.5,) * 3)
    return (lambda: copy.deepcopy(base)), 8


def make_stream(images: int, size: int) -> list[Experience]:
    """Two experiences of 5 classes each, random uint8 images (throughput does not depend on content)."""
    rng = np.random.default_rng(0)
    stream = []
    for i in range(2):
        classes = tuple(range(5 * i, 5 * i + 5))
        labels = np.asarray(classes)[np.arange(images) % 5]
        data = ImageDataset(rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8), labels,
                            np.arange(images), f"random/{i}")
        stream.append(Experience(i, data, data, classes, 5 * i + 5))
    return stream


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


def measure(name: str, args: argparse.Namespace, build, stream: list[Experience]) -> dict[str, float]:
    method_name, overrides = VARIANTS[name]
    device = torch.device(args.device)
    cfg = method_config(method_name) | overrides | {"batch_size": args.batch, "epochs": args.epochs,
                                                    "optimizer": args.optimizer}
    ctx = MethodContext(build_backbone=build, num_classes=10, device=device, amp=args.amp and device.type == "cuda")
    torch.manual_seed(0)
    method = create_method(cfg, ctx)
    method.train_experience(stream[0])  # untimed: MIGU masks from the second experience on
    made, original = [], training.make_optimizer
    training.make_optimizer = lambda params, hp: made.append(original(params, hp)) or made[-1]
    try:
        stream[1].tensors("train", device)  # decoded once, outside the timing
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        method.train_experience(stream[1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        training.make_optimizer = original
    total = sum(p.numel() for p in method.model.parameters())
    in_opt = sum(p.numel() for g in made[-1].param_groups for p in g["params"] if p.grad is not None)
    return dict(train_img_s=args.epochs * len(stream[1].train) / seconds, opt_state_mb=state_bytes(made[-1]) / 2**20,
                trained_share=in_opt / total)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    build, size = make_backbone_builder(args.vit_b16)
    stream = make_stream(args.images, size)
    names = ["finetune", *[m for m in args.methods if m != "finetune"]]
    for name in names:  # warm-up: allocator, kernels
        measure(name, argparse.Namespace(**{**vars(args), "epochs": 1}), build, stream)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(measure(name, args, build, stream))
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    base = rows["finetune"]
    gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if gpu else f"cpu, {torch.get_num_threads()} threads"
    model = "vit_base_patch16_224" if args.vit_b16 else "vit_digits_patch2 (tiny ViT)"
    print(f"{model}, {args.images} images x {args.epochs} epochs, batch {args.batch}, {args.optimizer}, "
          f"{'bf16' if args.amp else 'fp32'}, {device}, median of {args.rounds} rounds")
    print(f"{'method':<16}{'train img/s':>12}{'vs finetune':>12}{'opt state MB':>14}{'vs finetune':>12}"
          f"{'trained share':>15}")
    for name, row in rows.items():
        print(f"{name:<16}{row['train_img_s']:>12.1f}{row['train_img_s'] / base['train_img_s']:>12.2f}"
              f"{row['opt_state_mb']:>14.3f}{row['opt_state_mb'] / base['opt_state_mb']:>12.2f}"
              f"{row['trained_share']:>15.2f}")


if __name__ == "__main__":
    main()
