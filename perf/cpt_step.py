"""img/s of one continual-pretraining step (protocol=continual_pretraining) against a hand-written open_clip loop.

fluxbench's side is the protocol's own task loop (:func:`fluxbench.protocols.cpt.step.train_task`): each step draws
the mixed batch from the three pools (pretraining / update / buffer, 11/11/10 at B=32), sets the scheduled lr,
runs the method's loss (symmetric InfoNCE, learnable logit scale), its hooks, gradient clipping, AdamW and the
logit-scale clamp. The reference is the loop one would write by hand around open_clip: the same CLIP (a copy of
the method's model, reassembled as an open_clip ``CLIP``, so LoRA's modules are in it too), one fixed batch already
on the device, ``model(images, tokens)`` -> ``ClipLoss`` -> backward -> clip -> AdamW -> clamp. The batch holds the
same images and captions as the pools. Both run in one process, in interleaved rounds (medians reported), so a
slow spell on a shared machine hits both alike; the ratio is what to read (goal >= 0.95)::

    python perf/cpt_step.py                          # the embedded tiny CLIP on CPU, B=32
    python perf/cpt_step.py --device cuda --amp      # bf16 autocast on a GPU
    python perf/cpt_step.py --vit-b16 --device cuda --amp --batch 128   # open_clip ViT-B-16 (random init)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import open_clip
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from open_clip.loss import ClipLoss

from fluxbench.methods import create_method
from fluxbench.methods.registry import method_config
from fluxbench.protocols.cpt.mixture import DEFAULT_MIXTURE, sub_batch_sizes
from fluxbench.protocols.cpt.pools import ImageTextPool, MixedBatches
from fluxbench.protocols.cpt.schedule import check_schedule
from fluxbench.protocols.cpt.step import autocast, batch_tensors, train_task
from fluxbench.protocols.setup import method_context

METHODS = {"finetune": "cpt_finetune", "lora": "cpt_lora"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA), in both loops")
    parser.add_argument("--vit-b16", action="store_true", help="open_clip ViT-B-16, random init, 224 px")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    return parser.parse_args()


def config(args: argparse.Namespace) -> dict:
    overrides = ["protocol=continual_pretraining", "benchmark=fomo_digits", "backbone=tiny_clip",
                 f"device={args.device}", f"amp={str(args.amp).lower()}"]
    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides), resolve=True)


def vit_b16_context(ctx):
    """The same context with an open_clip ViT-B-16 (random init: throughput does not depend on the weights)."""
    from fluxbench.backbones.clip import ClipBackbone

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    base = ClipBackbone(clip, open_clip.get_tokenizer("ViT-B-16"), (0.481, 0.458, 0.408), (0.269, 0.261, 0.276), {})
    ctx.build_backbone = lambda: copy.deepcopy(base)
    return ctx


def pools(method, args: argparse.Namespace, size: int) -> tuple[dict[str, ImageTextPool], dict[str, int]]:
    """Three pools that together hold exactly one batch: each step draws the same images and captions."""
    sizes = sub_batch_sizes(args.batch, DEFAULT_MIXTURE)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, (pool, n) in enumerate(sizes.items()):
        images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen)
        tokens = method.tokenize([f"a photo of the number {(k * 7 + i) % 10}." for i in range(n)])
        out[pool] = ImageTextPool(images, tokens, torch.zeros(n, dtype=torch.long), torch.full((n,), k - 2))
    return out, sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fluxbench_round(method, data, sizes, args, device, opts) -> float:
    batches = MixedBatches(data, sizes, 0, 1)  # task 1: the buffer pool has data as from task 2 on
    sync(device)
    start = time.perf_counter()
    train_task(method, batches, args.steps, 1, opts, device, method.ctx.amp)
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def open_clip_model(method) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The method's CLIP as one open_clip ``CLIP`` (visual tower put back), a copy with the same trainable set."""
    backbone = copy.deepcopy(method.model)
    clip = backbone.text
    clip.visual = backbone.model
    return clip, backbone


def hand_optimizer(model: torch.nn.Module, hparams) -> torch.optim.AdamW:
    """AdamW as open_clip's training builds it: gains, biases and the logit scale without weight decay."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": hparams.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=hparams.lr)


def hand_round(clip, backbone, opt, images, tokens, args, device, loss_fn, amp: bool) -> float:
    sync(device)
    start = time.perf_counter()
    params = [p for g in opt.param_groups for p in g["params"]]
    for _ in range(args.steps):
        x = backbone.normalize(backbone.transform(images) if backbone.transform is not None else images)
        with autocast(device, amp):
            image_features, text_features, scale = clip(x, tokens)
            loss = loss_fn(image_features.float(), text_features.float(), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace, ctx, size: int) -> dict[str, float]:
    torch.manual_seed(0)
    method = create_method(method_config(METHODS[name]), ctx)
    data, sizes = pools(method, args, size)
    images, tokens = batch_tensors({p: data[p] for p in data}, ctx.device)
    clip, backbone = open_clip_model(method)
    clip.train()
    opt = hand_optimizer(backbone, method.hparams)
    opts = {"scheduler": check_schedule({}), "grad_clip": 1.0}
    loss_fn = ClipLoss()
    warm = argparse.Namespace(**{**vars(args), "steps": 3})
    fluxbench_round(method, data, sizes, warm, ctx.device, opts)
    hand_round(clip, backbone, opt, images, tokens, warm, ctx.device, loss_fn, ctx.amp)
    ours, theirs = [], []
    for _ in range(args.rounds):  # interleaved: a slow spell on a shared machine hits both alike
        ours.append(fluxbench_round(method, data, sizes, args, ctx.device, opts))
        theirs.append(hand_round(clip, backbone, opt, images, tokens, args, ctx.device, loss_fn, ctx.amp))
    ours_m, theirs_m = statistics.median(ours), statistics.median(theirs)
    trained = sum(p.numel() for p in method.trainable_parameters())
    return {"fluxbench": ours_m, "open_clip": theirs_m, "ratio": ours_m / theirs_m, "trainable": trained}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config(args)
    ctx = method_context(cfg, num_classes=10)
    size = 32
    if args.vit_b16:
        ctx, size = vit_b16_context(ctx), 224
    model = "open_clip ViT-B-16 (random init)" if args.vit_b16 else "tiny CLIP (embedded)"
    print(f"{model}, B={args.batch}, {args.steps} steps x {args.rounds} rounds, device={ctx.device}, "
          f"amp={ctx.amp}, threads={torch.get_num_threads()}")
    print(f"{'method':<10} {'trainable':>11} {'fluxbench img/s':>16} {'open_clip img/s':>16} {'ratio':>6}")
    for name in args.methods:
        r = measure(name, args, ctx, size)
        print(f"{name:<10} {r['trainable']:>11,} {r['fluxbench']:>16.1f} {r['open_clip']:>16.1f} {r['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
