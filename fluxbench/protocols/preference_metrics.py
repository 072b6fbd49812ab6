"""Preferences and preference-weighted metrics of IBCL's evaluation (pure numpy).

Lu et al., "IBCL" (arXiv 2305.14782); upstream ``ibcl-anon/ibcl`` @ fe7787b ``generate_preferences.py`` and
``visualize_results.py``. Spec: ``specs/ibcl.md`` sections 4 and 5.

``accs[i]`` is an array ``(P_i, K, i + 1)``: after task ``i``, the accuracy of sampled model ``k`` of preference
``j`` on task ``l``. Reduced over samples by max / mean / min, weighted across preferences per task by
``w_j[l] / sum_j' w_j'[l]``, it gives ``A_i[l]``, the preference-weighted per-task accuracy, from which:

- average per-task accuracy ``mean_l A_i[l]`` and peak per-task accuracy ``max_l A_i[l]``;
- BWT (the standard one, on ``A``): ``mean_{l < T-1} (A_{T-1}[l] - A_l[l])``;
- the *adjacent-task difference* ``mean_l (A_i[l] - A_i[l-1])``: what upstream's code calls "backward transfer",
  a difference between neighbouring tasks at one time, reported under its own name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REDUCTIONS = {"max": np.max, "mean": np.mean, "min": np.min}


def generate_preferences(num_tasks: int, per_task: int, seed: int) -> list[list[list[float]]]:
    """``prefs[i]``: the preferences asked after task ``i``: ``[[1]]`` for task 0, then ``per_task`` draws of
    ``u ~ U(0, 1)^(i+1)`` normalised to sum 1 (upstream's rule, close to but not Dirichlet(1))."""
    rng = np.random.RandomState(seed)
    prefs: list[list[list[float]]] = [[[1.0]]]
    for i in range(1, num_tasks):
        draws = rng.rand(per_task, i + 1)
        prefs.append((draws / draws.sum(1, keepdims=True)).tolist())
    return prefs


def weighted_per_task(accs: np.ndarray, prefs: Sequence[Sequence[float]], reduce: str = "mean") -> np.ndarray:
    """``A_i``: the preference-weighted per-task accuracy at one time (``accs``: ``(P, K, i + 1)``)."""
    w = np.asarray(prefs, dtype=float)  # (P, i + 1)
    totals = w.sum(0)
    # upstream: a task no preference weighs gets 1 / i for every preference
    omega = np.where(totals > 0, w / np.where(totals > 0, totals, 1), 1.0 / max(w.shape[1] - 1, 1))
    return (omega * REDUCTIONS[reduce](accs, axis=1)).sum(0)


def adjacent_task_difference(a: np.ndarray) -> float:
    return float(np.mean(np.diff(a))) if len(a) > 1 else float("nan")


def preference_matrix(accs: Sequence[np.ndarray], prefs: Sequence[Sequence[Sequence[float]]],
                      reduce: str = "mean") -> np.ndarray:
    """``A[i, l]`` for every time seen (NaN above the diagonal), like the accuracy matrix ``R``."""
    T = len(accs)
    A = np.full((T, T), np.nan)
    for i in range(T):
        A[i, : i + 1] = weighted_per_task(np.asarray(accs[i]), prefs[i], reduce)
    return A


def preference_metrics(accs: Sequence[np.ndarray], prefs: Sequence[Sequence[Sequence[float]]]) -> dict[str, float]:
    """The headline numbers at the last time, each for the max / mean / min reduction over sampled models."""
    out: dict[str, float] = {}
    for reduce in REDUCTIONS:
        A = preference_matrix(accs, prefs, reduce)
        last = A[-1, : len(accs)]
        out[f"avg_per_task_acc_{reduce}"] = float(last.mean())
        out[f"peak_per_task_acc_{reduce}"] = float(last.max())
        out[f"bwt_{reduce}"] = standard_bwt(A)
        out[f"adjacent_task_difference_{reduce}"] = adjacent_task_difference(last)
    out["sample_acc_std"] = float(np.mean([np.asarray(a).std(axis=1).mean() for a in accs]))
    return out


def standard_bwt(A: np.ndarray) -> float:
    T = len(A)
    if T < 2:
        return float("nan")
    return float(np.mean([A[T - 1, t] - A[t, t] for t in range(T - 1)]))
