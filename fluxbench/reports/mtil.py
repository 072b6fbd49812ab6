"""The MTIL / X-TAIL section: Transfer, Average, Last in both label spaces, and CoDyRA's rank and drift per task.

Rows are the finished parents of ``protocol=mtil``. The figures are the seed runs' logged ``mtil_*`` / ``xtail_*``
metrics (computed by :func:`fluxbench.protocols.metrics.transfer_average_last` from each label space's dataset-by-
task matrix), averaged over seeds. Per task, the average effective rank (non-zero gates, mean over LoRA modules)
and the drift ``||theta_t - theta_0||_F`` are read from the step history of the seed runs' ``effective_rank_mean``
and ``drift`` metrics (logged once per task), averaged over seeds; methods without gates (zero-shot CLIP, full
fine-tuning) have none and show "-".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fluxbench.tracking import layout as L
from fluxbench.tracking.reading import StoreReader

FIGURES = ("mtil_transfer", "mtil_average", "mtil_last", "mtil_forgetting", "xtail_transfer", "xtail_average",
           "xtail_last")
LABELS = {f"{s}_{m}": f"{s.replace('mtil', 'MTIL').replace('xtail', 'X-TAIL')} {m} (%)"
          for s in ("mtil", "xtail") for m in ("transfer", "average", "last", "forgetting")}
PER_TASK = {"effective_rank_mean": "rank", "drift": "drift"}  # logged metric -> column prefix ("rank t1", ...)
NOTE = ("Transfer: mean over datasets of the accuracy before training on them (zero-shot retention); Average: "
        "mean over all tasks and datasets; Last: after the last task; MTIL scores each dataset among its own "
        "classes, X-TAIL among the union of all datasets' classes. rank t: average effective rank (non-zero "
        "gates, mean over LoRA modules) after task t; drift t: ||theta_t - theta_0||_F after task t.")


def mtil_parents(parents: pd.DataFrame) -> pd.DataFrame:
    return parents[parents["protocol"] == L.PROTOCOL_MTIL]


def _per_task(reader: StoreReader, run_ids: list[str], metric: str) -> dict[int, float]:
    """``{task: mean over seeds}`` of a metric logged with ``step`` = task index."""
    curves = [reader.history(rid, metric) for rid in run_ids]
    steps = sorted({s for c in curves for s in c})
    return {s: float(np.mean([c[s] for c in curves if s in c])) for s in steps}


def mtil_table(uri: str, parents: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per MTIL parent: the figures (%, mean over seeds), rank and drift per task, seeds."""
    chosen = mtil_parents(parents)
    if chosen.empty:
        return pd.DataFrame()
    reader = StoreReader(uri)
    rows = []
    for _, parent in chosen.sort_values(["benchmark", "method", "start_time"]).iterrows():
        runs = seeds[seeds["parent_id"] == parent["run_id"]]
        if runs.empty:
            continue
        row = {"benchmark": parent["benchmark"], "method": parent["method"]}
        for name in FIGURES:
            values = [m[name] for m in runs["metrics"] if name in m]
            row[name] = 100 * float(np.mean(values)) if values else np.nan
        for metric, prefix in PER_TASK.items():
            row |= {f"{prefix} t{s + 1}": v for s, v in _per_task(reader, list(runs["run_id"]), metric).items()}
        rows.append(row | {"seeds": len(runs), "run_id": parent["run_id"]})
    return pd.DataFrame(rows)


def task_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    return sorted((c for c in table.columns if c.startswith(f"{prefix} t")), key=lambda c: int(c.split("t")[-1]))


def header(table: pd.DataFrame) -> list[str]:
    return ["method", *(LABELS[f] for f in FIGURES), *task_columns(table, "rank"), *task_columns(table, "drift"),
            "seeds"]


def _value(row: pd.Series, column: str, digits: int) -> str:
    v = row.get(column)
    return "-" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def cells(row: pd.Series, table: pd.DataFrame) -> list[str]:
    return [row["method"], *(_value(row, f, 2) for f in FIGURES),
            *(_value(row, c, 2) for c in task_columns(table, "rank")),
            *(_value(row, c, 3) for c in task_columns(table, "drift")), str(row["seeds"])]
