"""The reproduction table: parent runs of ``fluxbench reproduce`` presets, measured against the published figure.

Measured is the mean over the run's evaluation seeds, recomputed from the seed runs as the leaderboard is
(:func:`fluxbench.reports.tables.parent_stats`); the published figure, its tolerance and source are what the run
recorded when it ran (the preset file may have changed since). Figures are in percent; metrics are fractions.
"""

from __future__ import annotations

import math

import pandas as pd

from fluxbench.reports.tables import parent_stats

COLUMNS = ["preset", "benchmark", "protocol", "method", "metric", "measured", "published", "difference", "tolerance",
           "within", "seeds", "source", "run_id"]


def _row(preset: str, parent: pd.Series, metric: str, published: float | None, figure: dict,
         stats: dict[str, dict[str, float]]) -> dict:
    s = stats.get(metric)
    measured = 100 * s["mean"] if s else math.nan
    diff = measured - float(published) if published is not None else math.nan
    tol = figure.get("tolerance")
    within = None if tol is None or math.isnan(diff) else bool(abs(diff) <= float(tol))
    return {"preset": preset, "benchmark": parent["benchmark"], "protocol": parent["protocol"],
            "method": parent["method"], "metric": metric, "measured": measured,
            "published": math.nan if published is None else float(published), "difference": diff,
            "tolerance": math.nan if tol is None else float(tol), "within": within,
            "seeds": int(s["n"]) if s else 0, "source": figure.get("source") or "", "run_id": parent["run_id"]}


def reproduction_table(parents: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per published metric of every finished parent run tagged with a preset (newest run first)."""
    tagged = parents[parents["preset"].notna()] if "preset" in parents else parents.iloc[:0]
    if tagged.empty:
        return pd.DataFrame(columns=COLUMNS)
    stats = parent_stats(per_seed)
    rows = []
    for _, parent in tagged.sort_values(["preset", "start_time"], ascending=[True, False]).iterrows():
        figure = parent["published"] or {}
        metric = figure.get("metric") or parent["rank_metric"]
        targets = {metric: figure.get("published"), **(figure.get("also") or {})}
        rows += [_row(parent["preset"], parent, m, p, figure, stats.get(parent["run_id"], {}))
                 for m, p in targets.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict(row: pd.Series) -> str:
    """``yes`` / ``no`` against the tolerance; ``-`` without a published figure or a tolerance."""
    return "-" if row["within"] is None or pd.isna(row["within"]) else ("yes" if row["within"] else "no")


def points(value: float, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
