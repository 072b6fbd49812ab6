"""The preference section (IBCL's evaluation, specs/ibcl.md sections 5 and 8): per-task accuracy table and sweep.

Rows are the finished parents of ``protocol=preference``. Per-task accuracies are the last row ``A_T[l]`` of each
seed's logged matrix (the preference-weighted per-task accuracy, mean over sampled models), averaged over seeds;
the headline numbers and the cost (models trained, batch updates) are the seed runs' logged metrics, averaged.
The sweep (two tasks, ``w = (t, 1 - t)``) is read from each seed's ``preference_accuracies.json``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fluxbench.tracking import layout as L
from fluxbench.tracking.reading import StoreReader

# logged seed metrics shown, in order: max / mean / min over sampled models, then the cost
HEADLINE = ("avg_per_task_acc_max", "avg_per_task_acc_mean", "avg_per_task_acc_min", "peak_per_task_acc_mean",
            "bwt_mean", "adjacent_task_difference_mean")
COST = ("models_trained", "batch_updates")
LABELS = {"avg_per_task_acc_max": "avg per-task acc, max (%)", "avg_per_task_acc_mean": "avg per-task acc (%)",
          "avg_per_task_acc_min": "avg per-task acc, min (%)", "peak_per_task_acc_mean": "peak per-task acc (%)",
          "bwt_mean": "BWT (%)", "adjacent_task_difference_mean": "adjacent-task difference (%)",
          "models_trained": "models trained", "batch_updates": "batch updates"}


def preference_parents(parents: pd.DataFrame) -> pd.DataFrame:
    return parents[parents["protocol"] == L.PROTOCOL_PREFERENCE]


def task_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("task ")]


def preference_table(parents: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per preference parent: final per-task accuracy (%) per task, headline numbers (%), cost, seeds."""
    rows = []
    for _, parent in preference_parents(parents).sort_values(["benchmark", "method"]).iterrows():
        runs = seeds[seeds["parent_id"] == parent["run_id"]]
        lasts = [m[-1] for m in runs["matrix"] if isinstance(m, np.ndarray)]
        if not lasts:
            continue
        row = {"benchmark": parent["benchmark"], "method": parent["method"]}
        row |= {f"task {t + 1}": 100 * float(v) for t, v in enumerate(np.mean(lasts, axis=0))}
        for name in (*HEADLINE, *COST):
            values = [m[name] for m in runs["metrics"] if name in m]
            scale = 1 if name in COST else 100
            row[name] = scale * float(np.mean(values)) if values else np.nan
        rows.append(row | {"seeds": len(lasts), "run_id": parent["run_id"]})
    return pd.DataFrame(rows)


def sweeps(uri: str, parents: pd.DataFrame, seeds: pd.DataFrame) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """``{(benchmark, method): {"t": (P,), "acc": (P, 2)}}``: the two-task sweep, mean over seeds."""
    pref = preference_parents(parents)
    if pref.empty:
        return {}
    reader = StoreReader(uri)
    out = {}
    for _, parent in pref.iterrows():
        details = [reader.json_artifact(rid, L.PREFERENCE_ACCURACIES_ARTIFACT)
                   for rid in seeds.loc[seeds["parent_id"] == parent["run_id"], "run_id"]]
        curves = [np.asarray(d["sweep"], dtype=float) for d in details if d and d.get("sweep")]
        if curves and all(c.shape == curves[0].shape for c in curves) and not np.isnan(curves[0]).all():
            t = next(d["sweep_t"] for d in details if d and d.get("sweep"))
            out[(parent["benchmark"], parent["method"])] = {"t": np.asarray(t), "acc": np.mean(curves, axis=0)}
    return out


def value(row: pd.Series, name: str) -> str:
    v = row.get(name)
    if v is None or pd.isna(v):
        return "-"
    return f"{v:.0f}" if name in COST else f"{v:.2f}"


def header(table: pd.DataFrame) -> list[str]:
    return ["method", *task_columns(table), *(LABELS[n] for n in (*HEADLINE, *COST)), "seeds"]


def cells(row: pd.Series, table: pd.DataFrame) -> list[str]:
    return [row["method"], *(value(row, c) for c in task_columns(table)),
            *(value(row, n) for n in (*HEADLINE, *COST)), str(row["seeds"])]


NOTE = ("Task l: the preference-weighted accuracy A_T[l] on task l after the last task (mean over sampled models, "
        "weighted across the preferences asked; %). BWT: the standard one on A; adjacent-task difference: what "
        "upstream's code calls backward transfer. Cost per seed: models trained and optimiser steps (batch "
        "updates); IBCL builds its preference models without training, the baselines train one run per "
        "preference (sweep points included).")
