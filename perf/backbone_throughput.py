"""ViT forward+backward throughput: fluxbench's FeatureBackbone beside plain ``timm.create_model``.

Both models are built in the same process with the same random weights (no download) and timed
in interleaved rounds under three settings: fp32, bf16 autocast, and bf16 autocast with channels-last
inputs. The ratio fluxbench/timm shows the cost of the wrapper (input normalisation, and any PEFT
modules with ``--peft``). Runs on CPU with a tiny batch as well as on a GPU::

    python perf/backbone_throughput.py                         # GPU: ViT-B/16, batch 128
    python perf/backbone_throughput.py --device cpu --batch 2 --steps 2
    python perf/backbone_throughput.py --peft adapter --csv out.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import time

import timm
import torch

from fluxbench.backbones import build_backbone

SETTINGS = {
    "fp32": dict(amp=False, channels_last=False),
    "bf16": dict(amp=True, channels_last=False),
    "bf16+channels_last": dict(amp=True, channels_last=True),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on a GPU, 2 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 20 GPU, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 GPU, 1 CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timm/fluxbench rounds; median reported")
    parser.add_argument("--peft", choices=["none", "adapter", "lora"], default="none",
                        help="attach a PEFT set to the fluxbench model (frozen backbone) to see its cost")
    parser.add_argument("--csv", default=None, help="also write the results here")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.batch = args.batch or (128 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    return args


def build_pair(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Plain timm model and fluxbench backbone with identical weights, on the device."""
    torch.manual_seed(0)
    plain = timm.create_model(args.model, pretrained=False, num_classes=0)
    ours = build_backbone({"kind": "timm", "model": args.model, "pretrained": False,
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    ours.model.load_state_dict(plain.state_dict())
    if args.peft != "none":
        from fluxbench.peft import attach

        ours.requires_grad_(False)
        cfg = dict(bottleneck=16) if args.peft == "adapter" else dict(targets=["q", "v"], rank=8)
        attach(ours, args.peft, **cfg)
    return plain.to(args.device).train(), ours.to(args.device).train()


def step(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> None:
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = model(x)
    out.float().pow(2).mean().backward()
    for p in model.parameters():
        p.grad = None


def timed(model: torch.nn.Module, x: torch.Tensor, amp: bool, steps: int, warmup: int) -> float:
    """Images per second over ``steps`` forward+backward passes."""
    for _ in range(warmup):
        step(model, x, amp)
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(model, x, amp)
    sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    plain, ours = build_pair(args)
    size = plain.pretrained_cfg.get("input_size", (3, 224, 224))
    rows = []
    for name, setting in SETTINGS.items():
        fmt = torch.channels_last if setting["channels_last"] else torch.contiguous_format
        plain.to(memory_format=fmt)
        ours.to(memory_format=fmt)
        x = torch.rand(args.batch, *size, device=args.device).contiguous(memory_format=fmt)
        speeds = {"timm": [], "fluxbench": []}
        for _ in range(args.rounds):
            speeds["timm"].append(timed(plain, x, setting["amp"], args.steps, args.warmup))
            speeds["fluxbench"].append(timed(ours, x, setting["amp"], args.steps, args.warmup))
        t, f = statistics.median(speeds["timm"]), statistics.median(speeds["fluxbench"])
        rows.append(dict(setting=name, timm_img_s=round(t, 1), fluxbench_img_s=round(f, 1), ratio=round(f / t, 3)))
    base = rows[0]["timm_img_s"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.model}, batch {args.batch}, {device}, peft={args.peft}, torch {torch.__version__}, "
          f"timm {timm.__version__}")
    print(f"{'setting':<20}{'timm img/s':>12}{'fluxbench img/s':>17}{'ratio':>8}{'vs fp32 timm':>14}")
    for row in rows:
        print(f"{row['setting']:<20}{row['timm_img_s']:>12.1f}{row['fluxbench_img_s']:>17.1f}{row['ratio']:>8.3f}"
              f"{row['timm_img_s'] / base:>14.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
