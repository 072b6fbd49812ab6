"""Learning-rate schedules of continual pretraining (spec ``fomo_in_flux.md`` sections 4 and 6; the release's
``continual_lib/utils/base_continual_learner.py``). ``S``: the task's steps, ``W = round(warmup * S)`` its
warm-up steps, ``lr_min = lr * min_factor``, ``t`` the task (0-based), ``s`` the step within it (0-based).

- ``cosine_with_linear_warmup`` (default): restarted every task, a linear warm-up over ``W`` steps to the peak
  ``lr``, then a cosine down to ``lr_min``.
- ``cosine_with_linear_warmup_and_recovery`` (the "autoregressive" meta-cosine): the same shape, with the task's
  peak itself following a global cosine over tasks,
  ``peak_t = lr_min + 1/2 (1 + cos(pi (t (S - W) + 1) / ((t + 1)(S - W)))) (lr - lr_min)``.
- ``cosine_with_linear_warmup_and_dynamic_recovery``: warm-up to ``peak_t``, then the within-task decay is the
  continuation of one global cosine with warm-up over ``(t + 1) S`` steps, evaluated at step ``t S + s`` (task 1
  is the plain default; later tasks resume the global curve where it stands, instead of restarting at ``lr``).
- ``rsqrt``: restarted every task, a linear warm-up to ``lr``, then the inverse square root
  ``lr_min + sqrt(W / s) (lr - lr_min)``, and over the task's last ``C = round(cooldown * S)`` steps a linear
  cooldown of that value to 0 (``(C - k - 1) / C`` at cooldown step ``k``).
- ``constant``: ``lr`` throughout (for tests and ablations).

What differs from the release: fractions of a task's steps are rounded to the nearest step (the release rounds
up); a cosine step is indexed from the end of the warm-up (the release from one past it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fluxbench.errors import ConfigError

SCHEDULES = ("cosine_with_linear_warmup", "cosine_with_linear_warmup_and_recovery",
             "cosine_with_linear_warmup_and_dynamic_recovery", "rsqrt", "constant")
RECOVERY = ("cosine_with_linear_warmup_and_recovery", "cosine_with_linear_warmup_and_dynamic_recovery")


def check_schedule(opts: Mapping[str, Any]) -> dict[str, Any]:
    name = opts.get("name", "cosine_with_linear_warmup")
    if name not in SCHEDULES:
        raise ConfigError(f"protocol.scheduler.name must be one of {', '.join(SCHEDULES)}; got {name!r}")
    warmup, low = float(opts.get("warmup", 0.1)), float(opts.get("min_factor", 1e-3))
    cooldown = float(opts.get("cooldown", 0.1))
    if not 0 <= warmup < 1 or not 0 <= low <= 1:
        raise ConfigError(f"protocol.scheduler: warmup must be in [0, 1) and min_factor in [0, 1]; got "
                          f"{warmup}, {low}")
    if not 0 <= cooldown < 1 or warmup + cooldown > 1:
        raise ConfigError(f"protocol.scheduler.cooldown must be in [0, 1) with warmup + cooldown <= 1; got "
                          f"cooldown {cooldown}, warmup {warmup}")
    return {"name": name, "warmup": warmup, "min_factor": low, "cooldown": cooldown}


def _cosine(step: int, steps: int, warm: int, peak: float, low: float) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    span = max(1, steps - warm)
    return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * (step - warm) / span))


def _rsqrt(step: int, steps: int, warm: int, cool: int, peak: float, low: float) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    value = low + math.sqrt(max(1, warm) / max(1, step)) * (peak - low)  # = peak at the end of the warm-up
    start = steps - cool
    return value * (cool - (step - start) - 1) / cool if cool and step >= start else value


def recovery_peak(task: int, steps: int, warm: int, lr: float, low: float) -> float:
    """The autoregressive meta-cosine's peak of task ``task``: ``lr`` on task 0, then falling over tasks."""
    span = max(1, steps - warm)
    return low + 0.5 * (1 + math.cos(math.pi * (task * span + 1) / ((task + 1) * span))) * (lr - low)


def lr_at(step: int, steps: int, task: int, lr: float, opts: Mapping[str, Any]) -> float:
    """The learning rate of ``step`` (0-based) of ``steps`` in task ``task`` (0-based)."""
    name = opts["name"]
    if name == "constant":
        return lr
    warm = int(round(opts["warmup"] * steps))
    low = lr * opts["min_factor"]
    if name == "rsqrt":
        return _rsqrt(step, steps, warm, int(round(opts["cooldown"] * steps)), lr, low)
    peak = recovery_peak(task, steps, warm, lr, low) if name in RECOVERY and task > 0 else lr
    if name == "cosine_with_linear_warmup_and_dynamic_recovery" and step >= warm:
        total = (task + 1) * steps  # the global curve: one cosine with warm-up over every task so far
        return _cosine(task * steps + step, total, int(round(opts["warmup"] * total)), lr, low)
    return _cosine(step, steps, warm, peak, low)
