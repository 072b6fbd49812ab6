"""Training img/s and peak memory of CoDyRA, plain LoRA and full fine-tuning; inference img/s after merging.

One process, one randomly initialised CLIP (the tiny digits CLIP, or ViT-B/16 with ``--vit-b16``), one few-shot
task of random images with ten class prompts. Each method trains ``--steps`` AdamW steps of its own defaults
(CoDyRA prunes in the second half and merges at the end, inside the timing); methods run in interleaved rounds
(medians), so a slow spell on a shared machine hits all alike: read the ratios, not the absolute numbers.

Peak memory: on CUDA ``max_memory_allocated`` over the training call; on CPU the peak of glibc's in-use heap
(``mallinfo2``, sampled every millisecond) above its level before the call, which is where torch's CPU tensors
live. ``state MB`` is exact on both: trained parameters, their gradients and AdamW's two moments.

Inference (``image_features`` of test batches, no grad) is measured for the base CLIP as released (fused
``nn.MultiheadAttention``), for each LoRA method after its task (updates merged; the fresh rank-r LoRA of the next
task still attached, as the protocol scores it) and after detaching those fresh modules (merged weights only)::

    python perf/codyra.py                      # tiny CLIP on CPU
    python perf/codyra.py --vit-b16 --amp      # ViT-B/16 (random init), bf16 autocast, on a GPU
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import threading
import time
from typing import Any

import numpy as np
import torch

from fluxbench.backbones.clip import build_clip_backbone
from fluxbench.backbones.tiny_clip import register_config
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.methods import MethodContext, create_method
from fluxbench.methods.registry import method_config
from fluxbench.streams.experience import PROMPTS_KEY, Experience

TRAINED = ("clip_finetune", "clip_lora", "codyra")
PROMPTS = [f"a photo of the number: {n}." for n in ("zero one two three four five six seven eight nine".split())]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-b16", action="store_true", help="open_clip ViT-B-16 (random init), 224 px")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--steps", type=int, default=40, help="AdamW steps per timed task")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def make_task(size: int, eval_images: int) -> Experience:
    """Ten classes, 16 shots each (the X-TAIL code's few-shot set), random uint8 images."""
    rng = np.random.default_rng(0)
    train = ImageDataset(rng.integers(0, 256, (160, size, size, 3), dtype=np.uint8), np.arange(160) % 10,
                         np.arange(160), "random/train")
    test = ImageDataset(rng.integers(0, 256, (eval_images, size, size, 3), dtype=np.uint8),
                        np.arange(eval_images) % 10, np.arange(eval_images), "random/test")
    return Experience(0, train, test, tuple(range(10)), 10, {PROMPTS_KEY: PROMPTS})


class HeapPeak:
    """Peak of glibc's in-use heap (small blocks + mmapped chunks) while the block runs, above its start."""

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    def __init__(self) -> None:
        libc = ctypes.CDLL("libc.so.6")
        self._call = libc.mallinfo2
        self._call.restype = self._Info

    def in_use(self) -> int:
        info = self._call()
        return int(info.uordblks + info.hblkhd)

    def __enter__(self) -> HeapPeak:
        self.start = self.peak = self.in_use()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.in_use())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.in_use())

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def infer_img_s(method: Any, task: Experience, device: torch.device, batch: int) -> float:
    with torch.no_grad():
        for x, _ in task.test_batches(batch, device):  # warm-up pass
            method.image_features(x)
            break
        _sync(device)
        start = time.perf_counter()
        for x, _ in task.test_batches(batch, device):
            method.image_features(x)
        _sync(device)
    return len(task.test) / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace, build, task: Experience) -> dict[str, float]:
    device = torch.device(args.device)
    ctx = MethodContext(build_backbone=build, num_classes=10, device=device, amp=args.amp and device.type == "cuda")
    torch.manual_seed(0)
    cfg = method_config(name) | ({"iterations": args.steps, "batch_size": args.batch} if name in TRAINED else {})
    method = create_method(cfg, ctx)
    row: dict[str, float] = {}
    if name in TRAINED:
        task.uint8_tensors("train", device)  # moved once, outside the timing
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        heap = HeapPeak()
        _sync(device)
        start = time.perf_counter()
        with heap:
            method.train_experience(task)
            _sync(device)
        row["train_img_s"] = args.steps * args.batch / (time.perf_counter() - start)
        row["peak_mb"] = ((torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda"
                          else heap.mb)
        params = method.trainable()
        row["state_mb"] = 4 * sum(p.numel() * p.element_size() for p in params) / 2**20  # param, grad, 2 moments
    row["infer_img_s"] = infer_img_s(method, task, device, args.batch)
    if hasattr(method, "handles"):
        for handle in method.handles.values():
            handle.detach()  # the merged weights alone, without the next task's fresh (zero) LoRA
        row["infer_detached_img_s"] = infer_img_s(method, task, device, args.batch)
    return row


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = {"model": "ViT-B-16", "pretrained": None} if args.vit_b16 else {"model": register_config(),
                                                                            "pretrained": None}
    torch.manual_seed(0)
    base = build_clip_backbone(spec | {"mean": [0.5] * 3, "std": [0.5] * 3})
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def build():
        fresh = build_clip_backbone(spec | {"mean": [0.5] * 3, "std": [0.5] * 3})
        fresh.load_state_dict(state)
        return fresh

    task = make_task(224 if args.vit_b16 else 32, args.eval_images)
    names = ["clip_zeroshot", *TRAINED]
    measure("clip_finetune", argparse.Namespace(**{**vars(args), "steps": 2}), build, task)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(measure(name, args, build, task))
    rows = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"{'ViT-B-16' if args.vit_b16 else 'tiny digits CLIP'} (random init), {args.steps} steps x batch "
          f"{args.batch}, {'bf16' if args.amp else 'fp32'}, {device}, median of {args.rounds} rounds")
    ft, zs = rows["clip_finetune"], rows["clip_zeroshot"]["infer_img_s"]
    print(f"{'method':<14}{'train img/s':>12}{'vs full FT':>11}{'peak MB':>10}{'vs full FT':>11}{'state MB':>10}"
          f"{'infer img/s':>12}{'vs base':>9}{'detached':>10}{'vs base':>9}")
    for name, r in rows.items():
        train = (f"{r['train_img_s']:>12.1f}{r['train_img_s'] / ft['train_img_s']:>11.2f}{r['peak_mb']:>10.1f}"
                 f"{r['peak_mb'] / ft['peak_mb']:>11.2f}{r['state_mb']:>10.2f}") if "train_img_s" in r else \
            f"{'-':>12}{'-':>11}{'-':>10}{'-':>11}{'-':>10}"
        detached = (f"{r['infer_detached_img_s']:>10.1f}{r['infer_detached_img_s'] / zs:>9.2f}"
                    if "infer_detached_img_s" in r else f"{'-':>10}{'-':>9}")
        print(f"{name:<14}{train}{r['infer_img_s']:>12.1f}{r['infer_img_s'] / zs:>9.2f}{detached}")


if __name__ == "__main__":
    main()
