"""The continual-pretraining section (FoMo-in-Flux, spec ``fomo_in_flux.md`` sections 5 and 7): final A_KA, A_ZS,
their geometric mean, the zero-shot point, steps and FLOPs per method, and each method's (A_ZS, A_KA) update path.

Rows are the leaderboard's ``protocol=continual_pretraining`` rows (the shown config of each method), so the
numbers are the seed runs' logged results aggregated by :mod:`.tables`. The path is read from each seed's
dataset-by-task table (row 0: the zero-shot point, row t: after task t) and averaged over seeds. Training FLOPs =
tasks x steps per task x FLOPs per step (the budget's counted forward + backward; end-of-task work not added).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from fluxbench.tracking import layout as L
from fluxbench.tracking.reading import StoreReader

PROTOCOL = L.PROTOCOL_CONTINUAL_PRETRAINING
RESULTS = ("A_KA", "A_ZS", "gmean")
NOTE = ("A_KA: mean score over the adaptation datasets (knowledge accumulation), A_ZS: over the evaluation-only "
        "datasets (zero-shot retention), gmean: their geometric mean; final = after the last task (every test "
        "image), zero-shot = before training; mean ± std over seeds, %. Steps: each method's steps per task under "
        "full fine-tuning's memory-adjusted FLOPs budget (mem x: the memory multiplier); train FLOPs = tasks x steps x "
        "FLOPs per step.")


def pretraining_rows(board: pd.DataFrame) -> pd.DataFrame:
    return board[board["protocol"] == PROTOCOL]


def read_path(text: str | None) -> np.ndarray | None:
    """``(T + 1, 2)``: (A_ZS, A_KA) at the zero-shot point and after each task, from a dataset-by-task table."""
    if not text:
        return None
    try:
        table = pd.read_csv(io.StringIO(text))
        return table[["A_ZS", "A_KA"]].to_numpy(dtype=float)
    except (ValueError, KeyError, pd.errors.ParserError):
        return None


def update_paths(uri: str, board: pd.DataFrame, seeds: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """``{(benchmark, method): (T + 1, 2)}``: the (A_ZS, A_KA) path of each shown row, mean over its seeds."""
    rows = pretraining_rows(board)
    if rows.empty:
        return {}
    reader = StoreReader(uri)
    out = {}
    for _, row in rows.iterrows():
        runs = seeds.loc[seeds["parent_id"] == row["run_id"], "run_id"]
        paths = [read_path(reader.text_artifact(rid, L.DATASET_TASK_ARTIFACT)) for rid in runs]
        paths = [p for p in paths if p is not None]
        if paths and all(p.shape == paths[0].shape for p in paths):
            out[(row["benchmark"], row["method"])] = np.mean(paths, axis=0)
    return out


def _mean(row: pd.Series, name: str) -> float:
    value = row.get(f"{name}_mean")
    return float(value) if value is not None and not pd.isna(value) else np.nan


def pretraining_table(board: pd.DataFrame, paths: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """One row per shown continual-pretraining method: results (fractions), zero-shot point, steps, FLOPs."""
    records = []
    for _, r in pretraining_rows(board).iterrows():
        rec = {"benchmark": r["benchmark"], "rank": r["rank"], "method": r["method"]}
        for name in RESULTS:
            rec |= {f"{name}_mean": _mean(r, name), f"{name}_std": float(r.get(f"{name}_std", np.nan)),
                    f"{name}_zero_shot": _mean(r, f"{name}_zero_shot")}
        path = paths.get((r["benchmark"], r["method"]))
        tasks = len(path) - 1 if path is not None else np.nan
        steps, flops = _mean(r, "budget.steps_per_task"), 1e9 * _mean(r, "budget.gflops_per_step")
        rec |= {"tasks": tasks, "steps_per_task": steps, "flops_per_step": flops,
                "memory_multiplier": _mean(r, "budget.memory_multiplier"), "training_flops": tasks * steps * flops,
                "seeds": int(r["seeds"]), "run_id": r["run_id"]}
        records.append(rec)
    return pd.DataFrame.from_records(records)


def percent(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.2f}"


def count(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.0f}"


HEADER = ["rank", "method", "A_KA (%)", "A_ZS (%)", "gmean (%)", "zero-shot KA / ZS", "steps/task", "FLOPs/step",
          "mem x", "train FLOPs", "seeds"]


def cells(row: pd.Series, si) -> list[str]:
    """The table's cells for one row; ``si`` formats counts (``2.00 G``)."""
    def result(name: str) -> str:
        mean, std = row[f"{name}_mean"], row[f"{name}_std"]
        return percent(mean) + ("" if pd.isna(std) or pd.isna(mean) else f" ± {100 * std:.2f}")

    def big(value: float) -> str:
        return "-" if pd.isna(value) or value <= 0 else si(value)

    zero = f"{percent(row['A_KA_zero_shot'])} / {percent(row['A_ZS_zero_shot'])}"
    multiplier = "-" if pd.isna(row["memory_multiplier"]) else f"{row['memory_multiplier']:.3f}"
    return [str(row["rank"]), row["method"], *(result(n) for n in RESULTS), zero, count(row["steps_per_task"]),
            big(row["flops_per_step"]), multiplier, big(row["training_flops"]), str(row["seeds"])]
