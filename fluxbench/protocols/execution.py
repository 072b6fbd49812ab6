"""Running one method over one stream for one seed: train, evaluate, checkpoint, track.

Both protocols call :func:`run_seed`. It is resumable: after every experience the
method's state, the accuracy matrix and the RNG state are saved, and a run restarted
with the same config hash continues from the last finished experience, giving the same
numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxbench.benchmarks import DataSplit
from fluxbench.methods import Method, create_method
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.setup import build_stream, method_context, seed_everything
from fluxbench.streams.experience import Experience
from fluxbench.streams.manifest import stream_manifest
from fluxbench.tracking import RunHandle, Tracker, config_hash, flatten
from fluxbench.tracking.mlflow_store import read_matrix


@dataclass
class SeedResult:
    seed: int
    matrix: np.ndarray
    sizes: list[int]
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    skipped: bool = False


@torch.no_grad()
def accuracy(method: Method, exp: Experience, device: torch.device, batch_size: int = 256) -> float:
    correct = 0
    for x, y in exp.test_batches(batch_size, device):
        correct += int((method.predict(x).argmax(1) == y).sum())
    return correct / len(exp.test)


def train_and_evaluate(
    method: Method,
    stream: list[Experience],
    device: torch.device,
    start: int = 0,
    matrix: np.ndarray | None = None,
    after_experience: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The CL loop: train on experience ``i``, then evaluate every experience seen so far."""
    T = len(stream)
    R = np.full((T, T), np.nan) if matrix is None else matrix
    for i in range(start, T):
        method.train_experience(stream[i])
        for j in range(i + 1):
            R[i, j] = accuracy(method, stream[j], device)
        if after_experience:
            after_experience(i, R)
    return R


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory of this process, or its peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Checkpoints:
    """Per-run checkpoint files, written atomically, removed when the run finishes."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.path = Path(root) / f"{key}.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run_seed(
    cfg: Mapping[str, Any],
    split: DataSplit,
    seed: int,
    tracker: Tracker,
    parent: RunHandle,
    tags: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Train and evaluate the configured method for one seed, as a child run of ``parent``."""
    chash = config_hash(cfg, "seed", seed, split.fingerprint())
    done = tracker.finished(chash)
    if done is not None:
        matrix = read_matrix(tracker.read_text(done.info.run_id, "accuracy_matrix.csv"))
        sizes = json.loads(done.data.tags["fluxbench.sizes"])
        if progress:
            progress(len(matrix))
        metrics = {**done.data.metrics, **summarize_matrix(matrix, sizes)}
        return SeedResult(seed, matrix, sizes, metrics, done.info.run_id, skipped=True)

    seed_everything(seed)
    stream = build_stream(cfg, split, seed, dataset_name=split.train.name.split("/")[0])
    sizes = [len(exp.test) for exp in stream]
    run = tracker.start(f"seed {seed}", chash, "seed", parent.run_id, {"seed": seed, **(tags or {})})
    if not run.resumed:
        tracker.log_params(run, flatten(cfg) | {"seed": seed})
        manifest = stream_manifest(stream, seed=seed, fingerprint=split.fingerprint())
        tracker.log_json(run, manifest, "stream_manifest.json")

    ctx = method_context(cfg, num_classes=stream[-1].num_seen_classes)
    method = create_method(cfg["method"], ctx)
    ckpt = Checkpoints(Path(cfg["tracking"]["checkpoint_dir"]), chash)
    state = ckpt.load() if run.resumed else None
    start, matrix = 0, None
    if state is not None:
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        start, matrix = state["next"], state["matrix"]
        if progress:
            progress(start)

    def after_experience(i: int, R: np.ndarray) -> None:
        step = summarize_matrix(R[: i + 1, : i + 1], sizes[: i + 1])
        tracker.log_metrics(run, {"accuracy": step["last_accuracy"], **{f"acc_exp{j}": R[i, j] for j in range(i + 1)}},
                            step=i)
        ckpt.save({"method": method.state_dict(), "rng": torch.get_rng_state(), "next": i + 1, "matrix": R.copy()})
        if progress:
            progress(1)

    started = time.perf_counter()
    with tracker.failing_on_error(run):
        R = train_and_evaluate(method, stream, ctx.device, start, matrix, after_experience)
    metrics = summarize_matrix(R, sizes)
    metrics.update(wall_time_s=time.perf_counter() - started, peak_memory_mb=peak_memory_mb(ctx.device),
                   **method.cost())
    tracker.log_metrics(run, {k: v for k, v in metrics.items() if not math.isnan(v)})
    tracker.log_matrix(run, R)
    tracker.set_tags(run, {"fluxbench.sizes": sizes})
    tracker.end(run)
    ckpt.clear()
    return SeedResult(seed, R, sizes, metrics, run.run_id)
