"""Everything derives from the accuracy matrix.

``R[i, j]`` is the accuracy on experience ``j``'s test set after training on experience
``i``; entries not evaluated are NaN (class-incremental streams evaluate ``j <= i``).
Per-step accuracy over all seen test samples weights each experience by its test size,
as PyCIL/PILOT report it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def step_accuracies(R: np.ndarray, sizes: Sequence[int] | None = None) -> np.ndarray:
    """Accuracy over all seen test samples after each experience (``A_i``)."""
    R = np.asarray(R, dtype=float)
    w = np.ones(R.shape[1]) if sizes is None else np.asarray(sizes, dtype=float)
    return np.array([np.average(R[i, : i + 1], weights=w[: i + 1]) for i in range(R.shape[0])])


def last_accuracy(R: np.ndarray, sizes: Sequence[int] | None = None) -> float:
    return float(step_accuracies(R, sizes)[-1])


def average_incremental_accuracy(R: np.ndarray, sizes: Sequence[int] | None = None) -> float:
    return float(step_accuracies(R, sizes).mean())


def forgetting(R: np.ndarray) -> float:
    """Chaudhry et al. (2018): mean over old experiences of (best earlier accuracy - final accuracy)."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([np.max(R[j:T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))


def forgetting_first_minus_last(R: np.ndarray) -> float:
    """avalanche's experience forgetting: mean over old experiences of (accuracy right after learning it - final
    accuracy), R[j, j] - R[T-1, j]; the negative of BWT. Named ``forgetting_first_last``."""
    return -backward_transfer(R) if np.asarray(R).shape[0] > 1 else 0.0


def forgetting_clipped(R: np.ndarray) -> float:
    """PyCIL/LAMDA-PILOT's forgetting: per old experience (class group), the best accuracy over every step, final
    included, minus the final one (so never below zero), averaged. Named ``forgetting_pycil``."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([np.max(R[j:T, j]) - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R: np.ndarray) -> float:
    """Lopez-Paz & Ranzato (2017): mean of R[T-1, j] - R[j, j] over j < T-1."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R: np.ndarray, baseline: Sequence[float] | None) -> float:
    """Lopez-Paz & Ranzato (2017): mean of R[j-1, j] - b_j; NaN when future entries were not evaluated."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    if T < 2 or baseline is None or np.isnan(R[np.arange(T - 1), np.arange(1, T)]).any():
        return math.nan
    return float(np.mean([R[j - 1, j] - baseline[j] for j in range(1, T)]))


def summarize_matrix(R: np.ndarray, sizes: Sequence[int] | None = None,
                     baseline: Sequence[float] | None = None) -> dict[str, float]:
    """The figures of one accuracy matrix. ``forgetting`` is Chaudhry's (the default everywhere); the avalanche and
    PyCIL/PILOT definitions come beside it, since the three differ by up to several points on the same matrix.
    ``fwt`` only where it is defined: with the baseline accuracies and the entries above the diagonal (a
    class-incremental stream cannot have them: an experience's classes are masked out before they are learnt)."""
    out = {
        "last_accuracy": last_accuracy(R, sizes),
        "avg_incremental_accuracy": average_incremental_accuracy(R, sizes),
        "forgetting": forgetting(R),
        "forgetting_first_last": forgetting_first_minus_last(R),
        "forgetting_pycil": forgetting_clipped(R),
        "bwt": backward_transfer(R),
    }
    fwt = forward_transfer(R, baseline)
    if not math.isnan(fwt):
        out["fwt"] = fwt
    return out


def mean_std_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and the half-width of a Student-t confidence interval of the mean."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * std / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return {"mean": float(v.mean()), "std": std, "ci95": half, "n": len(v)}


def transfer_average_last(R: np.ndarray) -> dict[str, float]:
    """MTIL / X-TAIL figures of a full ``T x T`` matrix (every dataset scored after every task; ZSCL, RAIL):
    Transfer = mean over datasets j > 0 of the mean over t < j of R[t, j] (zero-shot retention on datasets not
    yet learned), Average = the mean of every entry, Last = the mean of the final row, and forgetting."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    transfer = float(np.mean([R[:j, j].mean() for j in range(1, T)])) if T > 1 else float("nan")
    return {"transfer": transfer, "average": float(R.mean()), "last": float(R[-1].mean()),
            "forgetting": forgetting(R)}
