"""Compute-aware online evaluation (Alfarra et al., "Revisiting Test Time Adaptation Under Online Evaluation",
ICML 2024): the stream does not wait for the method.

Batches arrive at the source model's inference speed. A method ``k`` times slower than the source model adapts
on one batch in ``k`` (the first, then every k-th, counted over the whole stream); the batches that arrive while
it is busy are predicted by its current model without adapting (``method.infer``). ``k`` is the method's relative
cost on the stream's first batch, measured on copies so that the run itself starts untouched: by FLOPs
(``torch.utils.flop_counter.FlopCounterMode``: forward and backward, deterministic, the default) or by wall time
(median of a few timed calls), or given (``protocol.relative_speed``).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fluxbench.errors import ConfigError

MODES = ("offline", "realistic")
MEASURES = ("flops", "time")


def realistic_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``protocol.online_eval`` and, for realistic runs, how ``k`` is found; one-line errors for bad values."""
    proto = cfg["protocol"]
    mode = proto.get("online_eval") or "offline"
    if mode not in MODES:
        raise ConfigError(f"protocol.online_eval={mode!r}; use one of {', '.join(MODES)}")
    measure = proto.get("speed_measure") or "flops"
    if measure not in MEASURES:
        raise ConfigError(f"protocol.speed_measure={measure!r}; use one of {', '.join(MEASURES)}")
    given = proto.get("relative_speed")
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
        raise ConfigError(f"protocol.relative_speed must be an integer >= 1 or null (measured); got {given!r}")
    return {"mode": mode, "measure": measure, "relative_speed": given}


def flops_of(call: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def seconds_of(call: Callable[[], Any], repeats: int = 3) -> float:
    call()  # warm-up: allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_speed(method: Any, source: torch.nn.Module, x: torch.Tensor, measure: str) -> tuple[int, float, float]:
    """``(k, method cost, source cost)`` on batch ``x``; copies are measured, ``method`` is left as it was."""
    probe = copy.deepcopy(method)
    source = copy.deepcopy(source).eval()

    def infer_source() -> None:
        with torch.no_grad():
            source(x)

    measure_fn = flops_of if measure == "flops" else seconds_of
    cost, base = float(measure_fn(lambda: probe.adapt(x))), float(measure_fn(infer_source))
    if base <= 0:
        raise ConfigError(f"cannot measure the source model's {measure} on this device; set protocol.relative_speed")
    return max(1, math.ceil(cost / base - 1e-9)), cost, base


class RealisticClock:
    """Says, batch after batch over a whole stream, whether the method adapts (one in ``k``) or only predicts."""

    def __init__(self, k: int) -> None:
        self.k, self.batches, self.adapted = int(k), 0, 0

    def adapts(self) -> bool:
        adapt = self.batches % self.k == 0
        self.batches += 1
        self.adapted += adapt
        return adapt
