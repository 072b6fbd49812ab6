"""Leaderboard frames: per-seed numbers recomputed from the logged matrices, aggregated, ranked.

One source of truth: CL metrics come from each seed's accuracy matrix through
:func:`fluxbench.protocols.metrics.summarize_matrix`, and mean/std/95% CI over seeds from
:func:`fluxbench.protocols.summary.aggregate` (``mean_std_ci``); parents' logged aggregates are not copied.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy import stats

from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.summary import aggregate
from fluxbench.tracking.layout import STEP_METRIC_PATTERN

GROUP = ["benchmark", "protocol"]
ROW = ["benchmark", "protocol", "method"]
ACCURACY = ("last_accuracy", "avg_incremental_accuracy", "forgetting")
PERCENT = {"last_accuracy", "avg_incremental_accuracy", "forgetting", "forgetting_first_last", "forgetting_pycil",
           "bwt", "fwt", "mean_error", "A_KA", "A_ZS", "gmean"}
COMPUTE = ("wall_time_s", "peak_memory_mb")
LABELS = {"last_accuracy": "last acc (%)", "avg_incremental_accuracy": "avg inc acc (%)",
          "forgetting": "forgetting (%)", "forgetting_first_last": "forgetting, first-last (%)",
          "forgetting_pycil": "forgetting, PyCIL (%)", "bwt": "BWT (%)", "fwt": "FWT (%)",
          "mean_error": "mean error (%)",
          "A_KA": "A_KA (%)", "A_ZS": "A_ZS (%)", "gmean": "gmean of A_KA, A_ZS (%)",
          "wall_time_s": "wall time (s)", "peak_memory_mb": "peak mem (MB)"}
_STEPPED = re.compile(STEP_METRIC_PATTERN)  # per-experience curves, not results
_ID_COLUMNS = ("run_id", "parent_id", "seed")


def is_percent(metric: str) -> bool:
    return metric in PERCENT or metric.startswith("error.")


def is_flops(metric: str) -> bool:
    return "flop" in metric.lower()


def label(metric: str) -> str:
    if metric.startswith("error."):
        return metric.removeprefix("error.")
    if is_flops(metric) and metric not in LABELS:
        return metric.lower().replace("flops", "FLOPs").replace("_", " ")
    return LABELS.get(metric, metric.replace("_", " "))


def seed_metrics(seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per seed run: its logged metrics, with every matrix-derived one recomputed from ``R``."""
    rows = []
    for s in seeds.itertuples(index=False):
        values = {k: v for k, v in s.metrics.items() if not _STEPPED.match(k)}
        if s.matrix is not None:
            derived = summarize_matrix(s.matrix, s.sizes)
            for name in derived:
                values.pop(name, None)  # a NaN (e.g. FWT without a baseline) must not fall back to a logged value
            values.update({k: v for k, v in derived.items() if not math.isnan(v)})
        rows.append({"run_id": s.run_id, "parent_id": s.parent_id, "seed": s.seed, **values})
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*_ID_COLUMNS, *(k for r in rows for k in r)])))


def parent_stats(per_seed: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """``{parent_id: {metric: {mean, std, ci95, n}}}`` over that parent's seed runs."""
    names = [c for c in per_seed.columns if c not in _ID_COLUMNS]
    out = {}
    for pid, group in per_seed.groupby("parent_id"):
        agg = aggregate(group[names].to_dict("records"))
        out[pid] = {m: s for m, s in agg.items() if s["n"] > 0}
    return out


def ranking_metric(group: pd.DataFrame) -> tuple[str, bool]:
    """The metric a group is ranked by, and whether higher is better: what its parent runs said (the most common
    choice, should a group mix two, e.g. two_phase runs selected by different metrics)."""
    choice = group[["rank_metric", "higher_is_better"]].value_counts(sort=True).index[0]
    return str(choice[0]), bool(choice[1])


def _rows(parents: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    by_parent = parent_stats(per_seed)
    seeds_of = per_seed.groupby("parent_id")["seed"].apply(lambda s: sorted(s, key=str))
    rows = []
    for pid, p in parents.iterrows():
        row = {k: p[k] for k in (*ROW, "rank_metric", "higher_is_better", "config_hash", "run_id", "git_commit",
                                 "start_time")}
        row["seeds"] = len(seeds_of.get(pid, []))
        row["seed_list"] = " ".join(map(str, seeds_of.get(pid, [])))
        for metric, s in sorted(by_parent.get(pid, {}).items()):
            row.update({f"{metric}_mean": s["mean"], f"{metric}_std": s["std"], f"{metric}_ci95": s["ci95"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _rank_group(group: pd.DataFrame) -> pd.DataFrame:
    """Keep the best config per method, then rank methods (1 = best; ties share the better rank)."""
    metric, higher = ranking_metric(group)
    column = f"{metric}_mean"
    key = (group[column] if higher else -group[column]) if column in group else pd.Series(np.nan, group.index)
    group = group.assign(ranked_by=metric, _key=key.fillna(-np.inf))
    group["configs"] = group.groupby("method")["run_id"].transform("size")
    group = group.sort_values(["_key", "start_time"], ascending=False).drop_duplicates("method")
    group["rank"] = group["_key"].rank(ascending=False, method="min").astype(int)
    return group.drop(columns="_key")


def leaderboard(parents: pd.DataFrame, per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per method x benchmark x protocol, ranked within each benchmark x protocol.

    Several finished configs of one method (a sweep under the conventional protocol) give one
    row: the best by the ranking metric, as conventional tuning would pick; ``configs`` says how many.
    """
    rows = _rows(parents, per_seed)
    ranked = [_rank_group(g) for _, g in rows.groupby(GROUP, sort=True)]
    board = pd.concat(ranked, ignore_index=True).sort_values([*GROUP, "rank", "method"], ignore_index=True)
    front = [*GROUP, "rank", "method", "ranked_by", "seeds", "configs"]
    metrics = [c for c in board.columns if c.endswith(("_mean", "_std", "_ci95"))]
    tail = ["config_hash", "run_id", "git_commit", "seed_list", "start_time"]
    return board[front + metrics + tail]


def conventional_metric(parent_metrics: dict[str, float]) -> str | None:
    """The selection metric a two-phase parent logged as ``conventional_<metric>``."""
    names = sorted(k.removeprefix("conventional_") for k in parent_metrics if k.startswith("conventional_"))
    if not names:
        return None
    return "last_accuracy" if "last_accuracy" in names else names[0]


def two_phase_table(board: pd.DataFrame, parents: pd.DataFrame) -> pd.DataFrame:
    """Per two-phase row: the conventional score (best phase-1 mean, from the parent), the two-phase score
    (recomputed from the phase-2 seed runs), the gap, both ranks and Kendall's tau per benchmark.

    The gap is how much the conventional number flatters the method, in the metric's own direction (the parent's
    rank order): conventional minus two-phase for accuracies, two-phase minus conventional for errors (TTA's
    ``mean_error``), so a positive gap is an overestimate either way; ranks put the best score first."""
    rows = []
    for _, r in board[board["protocol"] == "two_phase"].iterrows():
        pm = parents.loc[r["run_id"], "metrics"]
        metric = conventional_metric(pm)
        if metric is None or f"{metric}_mean" not in r or pd.isna(r[f"{metric}_mean"]):
            continue
        conv, tp = pm[f"conventional_{metric}"], r[f"{metric}_mean"]
        higher = bool(parents.loc[r["run_id"], "higher_is_better"])
        rows.append({"benchmark": r["benchmark"], "method": r["method"], "metric": metric, "conventional": conv,
                     "two_phase": tp, "gap": conv - tp if higher else tp - conv,
                     "diverged": int(pm.get("phase2_diverged_seeds", 0)), "seeds": int(r["seeds"]), "higher": higher})
    columns = ["benchmark", "method", "metric", "conventional", "two_phase", "diverged", "seeds", "gap",
               "rank_conventional",
               "rank_two_phase", "rank_change", "kendall_tau"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    parts = []
    for _, g in table.groupby("benchmark", sort=True):
        best_first = not g["higher"].iloc[0]  # ascending ranks for errors
        g = g.assign(rank_conventional=g["conventional"].rank(ascending=best_first, method="min").astype(int),
                     rank_two_phase=g["two_phase"].rank(ascending=best_first, method="min").astype(int))
        g["rank_change"] = g["rank_conventional"] - g["rank_two_phase"]
        g["kendall_tau"] = kendall_tau(g["conventional"], g["two_phase"])
        parts.append(g.sort_values(["rank_two_phase", "method"]))
    return pd.concat(parts, ignore_index=True)[columns]


def diverged_note(row: pd.Series) -> str:
    """``" (1 of 5 seeds diverged)"`` beside a two-phase number whose seeds did; empty otherwise."""
    k = int(row.get("diverged", 0) or 0)
    return f" ({k} of {int(row['seeds'])} seeds diverged)" if k else ""


def kendall_tau(a: pd.Series, b: pd.Series) -> float:
    """Kendall's tau-b between two score lists (NaN below two methods or when a ranking is all ties)."""
    if len(a) < 2:
        return math.nan
    return float(stats.kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic)


def domain_columns(board: pd.DataFrame) -> list[str]:
    """TTA per-domain error metrics present in the board (alphabetical)."""
    return [c.removesuffix("_mean") for c in board.columns if c.startswith("error.") and c.endswith("_mean")]


def compute_columns(board: pd.DataFrame) -> list[str]:
    flops = sorted(c.removesuffix("_mean") for c in board.columns if c.endswith("_mean") and is_flops(c))
    return flops + [m for m in COMPUTE if f"{m}_mean" in board.columns]
