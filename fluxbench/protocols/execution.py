"""The supervised continual-learning loop: train on an experience, then evaluate every experience seen so far.

:class:`SupervisedLoop` is what :func:`fluxbench.protocols.seeds.run_seed` runs for ``conventional`` and
``two_phase`` seeds; :func:`train_and_evaluate` is the same loop without tracking, for tests and scripts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fluxbench.benchmarks import DataSplit
from fluxbench.errors import DivergedError
from fluxbench.methods import Method, MethodContext
from fluxbench.protocols.metrics import step_accuracies, summarize_matrix
from fluxbench.protocols.setup import build_stream, method_context, scenario_of
from fluxbench.streams.experience import Experience
from fluxbench.tracking.layout import DATA_SPLIT_TAG


def data_split_tags(split: DataSplit | None, role: str | None = None) -> dict[str, str]:
    """How the data's train and test parts were separated, as a run tag (none when the reader does not say)."""
    if split is None or not split.data_split:
        return {}
    return {DATA_SPLIT_TAG if role is None else f"{DATA_SPLIT_TAG}.{role}": split.data_split}


@torch.no_grad()
def accuracy(method: Method, exp: Experience, device: torch.device, num_seen: int, batch_size: int = 256) -> float:
    """Accuracy on ``exp``'s test set among the ``num_seen`` classes seen so far (the protocol masks, once)."""
    correct = 0
    for x, y in exp.test_batches(batch_size, device):
        correct += int((method.predict(x)[:, :num_seen].argmax(1) == y).sum())
    return correct / len(exp.test)


def learn_experience(method: Method, stream: list[Experience], i: int, R: np.ndarray, device: torch.device) -> None:
    """Train on experience ``i``, then fill row ``i`` of the accuracy matrix."""
    method.train_experience(stream[i])
    evaluate_row(method, stream, i, R, device)


def evaluate_row(method: Method, stream: list[Experience], i: int, R: np.ndarray, device: torch.device) -> None:
    """Row ``i`` of the accuracy matrix: every experience seen so far, among the classes seen so far."""
    for j in range(i + 1):
        R[i, j] = accuracy(method, stream[j], device, stream[i].num_seen_classes)


def train_and_evaluate(
    method: Method,
    stream: list[Experience],
    device: torch.device,
    start: int = 0,
    matrix: np.ndarray | None = None,
    after_experience: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The CL loop over the whole stream: ``R[i, j]``, accuracy on experience ``j`` after training on ``i``."""
    T = len(stream)
    R = np.full((T, T), np.nan) if matrix is None else matrix
    for i in range(start, T):
        learn_experience(method, stream, i, R, device)
        if after_experience:
            after_experience(i, R)
    return R


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory of this process, or its peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SupervisedLoop:
    """Class-incremental seeds: the stream of ``split`` for each seed; the result is the accuracy matrix.

    ``keep_diverged``: a diverging loss does not fail the seed; training stops there and the model is scored as
    it stands on every later experience (two_phase's phase 2: a selected setting that fails to transfer is what
    that protocol measures, so the seed stays in the figure). The seed's ``diverged`` metric says so.
    """

    resumable = True

    def __init__(self, cfg: Mapping[str, Any], split: DataSplit, keep_diverged: bool = False) -> None:
        self.cfg, self.split, self.keep_diverged = cfg, split, keep_diverged
        self.fingerprint = split.fingerprint()
        self.sizes_of_experiences = scenario_of(cfg).experience_sizes(split.num_classes)  # validates the scenario

    def num_experiences(self) -> int:
        return len(self.sizes_of_experiences)

    def stream(self, seed: int) -> list[Experience]:
        return build_stream(self.cfg, self.split, seed, dataset_name=self.split.train.name.split("/")[0])

    def context(self, stream: list[Experience]) -> MethodContext:
        return method_context(self.cfg, num_classes=stream[-1].num_seen_classes)

    def tags(self) -> dict[str, str]:
        return data_split_tags(self.split)

    def begin(self, stream: list[Experience]) -> dict[str, torch.Tensor]:
        T = len(stream)
        return {"matrix": torch.full((T, T), float("nan"), dtype=torch.float64),
                "diverged_at": torch.tensor(-1)}  # the experience whose training diverged; -1: none

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, torch.Tensor],
                   device: torch.device) -> dict[str, float]:
        R = partial["matrix"].numpy()  # a view: filling R fills the checkpointed tensor
        if _diverged_at(partial) < 0:
            try:
                method.train_experience(stream[i])
            except DivergedError as err:
                if not self.keep_diverged:
                    raise
                partial["diverged_at"] = torch.tensor(i)
                print(f"fluxbench: warning: {err}; training stops here and the model is scored as it stands",
                      file=sys.stderr)
        evaluate_row(method, stream, i, R, device)
        sizes = [len(e.test) for e in stream[: i + 1]]
        return {"accuracy": float(step_accuracies(R[: i + 1, : i + 1], sizes)[-1]),
                **{f"acc_exp{j}": float(R[i, j]) for j in range(i + 1)}}

    def result(self, stream: list[Experience], partial: dict[str, torch.Tensor]
               ) -> tuple[dict[str, float], np.ndarray | None, list[int] | None]:
        R, sizes = partial["matrix"].numpy().copy(), [len(e.test) for e in stream]
        metrics = summarize_matrix(R, sizes)
        if self.keep_diverged:
            metrics["diverged"] = float(_diverged_at(partial) >= 0)
        return metrics, R, sizes


def _diverged_at(partial: Mapping[str, Any]) -> int:
    return int(partial.get("diverged_at", -1))
