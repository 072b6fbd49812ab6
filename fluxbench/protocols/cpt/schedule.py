"""Learning-rate schedules of continual pretraining (spec ``fomo_in_flux.md`` sections 4 and 6).

``cosine_with_linear_warmup`` (default): restarted every task, a linear warm-up over ``warmup`` of the
task's steps to the peak ``lr``, then a cosine down to ``lr * min_factor``.
``cosine_with_linear_warmup_and_recovery`` (the "autoregressive" meta-cosine): the same shape, with the
task's peak itself following a global cosine over tasks,
``peak_t = lr_min + 1/2 (1 + cos(pi (t (S - W) + 1) / ((t + 1)(S - W)))) (lr - lr_min)``.
``constant``: ``lr`` throughout (for tests and ablations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fluxbench.errors import ConfigError

SCHEDULES = ("cosine_with_linear_warmup", "cosine_with_linear_warmup_and_recovery", "constant")


def check_schedule(opts: Mapping[str, Any]) -> dict[str, Any]:
    name = opts.get("name", "cosine_with_linear_warmup")
    if name not in SCHEDULES:
        raise ConfigError(f"protocol.scheduler.name must be one of {', '.join(SCHEDULES)}; got {name!r}")
    warmup, low = float(opts.get("warmup", 0.1)), float(opts.get("min_factor", 1e-3))
    if not 0 <= warmup < 1 or not 0 <= low <= 1:
        raise ConfigError(f"protocol.scheduler: warmup must be in [0, 1) and min_factor in [0, 1]; got "
                          f"{warmup}, {low}")
    return {"name": name, "warmup": warmup, "min_factor": low}


def _cosine(step: int, steps: int, warm: int, peak: float, low: float) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    span = max(1, steps - warm)
    return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * (step - warm) / span))


def lr_at(step: int, steps: int, task: int, lr: float, opts: Mapping[str, Any]) -> float:
    """The learning rate of ``step`` (0-based) of ``steps`` in task ``task`` (0-based)."""
    if opts["name"] == "constant":
        return lr
    warm = int(round(opts["warmup"] * steps))
    low = lr * opts["min_factor"]
    peak = lr
    if opts["name"] == "cosine_with_linear_warmup_and_recovery":
        span = max(1, steps - warm)
        peak = low + 0.5 * (1 + math.cos(math.pi * (task * span + 1) / ((task + 1) * span))) * (lr - low)
    return _cosine(step, steps, warm, peak, low)
