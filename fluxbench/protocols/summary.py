"""Aggregating seeds into the numbers a user reads, and printing them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from fluxbench.protocols.metrics import mean_std_ci

HEADLINE = ("last_accuracy", "avg_incremental_accuracy", "forgetting")
LABELS = {"last_accuracy": "last acc", "avg_incremental_accuracy": "avg inc acc", "forgetting": "forgetting",
          "bwt": "BWT", "fwt": "FWT"}


def aggregate(per_seed: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {mean, std, ci95, n}}`` over seeds."""
    per_seed = list(per_seed)
    names = dict.fromkeys(name for m in per_seed for name in m)
    return {name: mean_std_ci([m.get(name, math.nan) for m in per_seed]) for name in names}


def flat_summary(agg: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """``{"last_accuracy_mean": ..., "last_accuracy_std": ...}`` for MLflow metrics."""
    out = {}
    for name, stats in agg.items():
        for key in ("mean", "std", "ci95"):
            if not math.isnan(stats[key]):
                out[f"{prefix}{name}_{key}"] = stats[key]
    return out


def format_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Iterable[str] = HEADLINE) -> str:
    """A fixed-width table: one row per label, ``mean ± std (±ci95)`` in percent per metric."""
    metrics = list(metrics)
    header = ["", *[LABELS.get(m, m) for m in metrics], "seeds"]
    lines = [header]
    for label, agg in rows.items():
        cells = [label]
        for m in metrics:
            s = agg.get(m)
            if s is None or math.isnan(s["mean"]):
                cells.append("-")
                continue
            ci = "" if math.isnan(s["ci95"]) else f" (±{100 * s['ci95']:.1f})"
            cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}{ci}")
        n = next(iter(agg.values()))["n"] if agg else 0
        cells.append(str(n))
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)
