"""Training-loop overhead: fluxbench's `finetune` and avalanche's `Naive` against a hand-written loop.

The same model (a small CNN with fluxbench's input normalisation), the same data (uint8 images
decoded once), the same optimiser and the same number of steps, three ways in one process.
Prints img/s for each and the ratio to the hand-written loop (goal: fluxbench >= 0.97).

    .venv/bin/python perf/overhead.py [--samples 4096] [--epochs 3] [--batch-size 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.backbones.small_cnn import SmallCNN
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.methods import MethodContext, create_method
from fluxbench.methods.base import ClassifierModel
from fluxbench.streams.experience import Experience

HP = dict(name="finetune", lr=0.01, batch_size=64, optimizer="sgd", momentum=0.9, weight_decay=0.0,
          scheduler="constant", freeze_backbone=False)


def make_data(n: int, size: int = 32) -> Experience:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    data = ImageDataset(images, labels, np.arange(n), "synthetic")
    return Experience(0, data, data, tuple(range(10)), 10)


def build_model() -> ClassifierModel:
    torch.manual_seed(0)
    backbone = FeatureBackbone(SmallCNN(), 128, mean=[0.5] * 3, std=[0.5] * 3)
    return ClassifierModel(backbone, 10)


def hand_written(exp: Experience, epochs: int, batch_size: int) -> float:
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=HP["lr"], momentum=HP["momentum"])
    x, y = exp.tensors("train")
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epochs * len(y) / (time.perf_counter() - start)


def fluxbench_finetune(exp: Experience, epochs: int, batch_size: int) -> float:
    ctx = MethodContext(build_backbone=lambda: build_model().backbone, num_classes=10, device=torch.device("cpu"))
    method = create_method({**HP, "epochs": epochs, "batch_size": batch_size}, ctx)
    exp.tensors("train")  # decoded once, as in the hand-written loop
    start = time.perf_counter()
    method.train_experience(exp)
    return epochs * len(exp.train) / (time.perf_counter() - start)


def avalanche_naive(exp: Experience, epochs: int, batch_size: int) -> float:
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience, EagerCLStream
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    model = build_model()
    x, y = exp.tensors("train")
    data = _make_taskaware_tensor_classification_dataset(x, y)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=HP["lr"], momentum=HP["momentum"]),
                     train_mb_size=batch_size, train_epochs=epochs, evaluator=EvaluationPlugin(loggers=[]))
    stream = EagerCLStream("train", [DatasetExperience(dataset=data, current_experience=0)])
    start = time.perf_counter()
    strategy.train(stream[0], num_workers=0)
    return epochs * len(y) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each (interleaved)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    exp = make_data(args.samples)
    runners = {"hand-written loop": hand_written, "fluxbench finetune": fluxbench_finetune,
               "avalanche Naive": avalanche_naive}
    for run in runners.values():  # warm-up: allocator, kernels, imports
        run(make_data(256), 1, args.batch_size)
    best = {name: 0.0 for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            best[name] = max(best[name], run(exp, args.epochs, args.batch_size))
    base = best["hand-written loop"]
    print(f"small CNN, {args.samples} 32x32 images, {args.epochs} epochs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for name, ips in best.items():
        print(f"{name:<20} {ips:9.1f} img/s   ratio {ips / base:.3f}")


if __name__ == "__main__":
    main()
