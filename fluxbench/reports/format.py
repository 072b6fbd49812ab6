"""Numbers and sentences shared by the Markdown and HTML writers."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from fluxbench.reports.tables import ACCURACY, compute_columns, is_percent

_SI = ("", "k", "M", "G", "T", "P", "E")
LEGEND = ("cells: mean ± std over seeds [95% confidence interval half-width]; accuracies and errors in %; "
          "forgetting: Chaudhry et al. 2018, the mean over old experiences of (best earlier accuracy - final "
          "accuracy); leaderboard.csv adds avalanche's (first - final) and PyCIL/PILOT's (best of all steps - final)")


def number(value: float, metric: str, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if is_percent(metric):
        return f"{100 * value:.{2 if digits is None else digits}f}"
    if abs(value) >= 1e6:
        return si(value)
    return f"{value:.{1 if digits is None else digits}f}"


def si(value: float) -> str:
    """``2.00 G`` for 2.004e9: counts such as FLOPs, with three significant digits."""
    exponent = min(int(math.log10(abs(value)) // 3), len(_SI) - 1)
    scaled = value / 10 ** (3 * exponent)
    decimals = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
    return f"{scaled:.{decimals}f} {_SI[exponent]}"


def parts(row: pd.Series, metric: str) -> tuple[str, str, str]:
    """``(mean, std, ci95)`` as text; ``"-"`` where missing."""
    return tuple(number(row.get(f"{metric}_{k}", math.nan), metric) for k in ("mean", "std", "ci95"))


def cell(row: pd.Series, metric: str, with_ci: bool = True) -> str:
    mean, std, ci = parts(row, metric)
    if mean == "-":
        return "-"
    text = f"{mean} ± {std}"
    return f"{text} [±{ci}]" if with_ci and ci != "-" else text


def headline(board: pd.DataFrame) -> list[str]:
    """Metrics shown in a leaderboard table (those present in this group)."""
    group = board.dropna(axis=1, how="all")
    shown = [m for m in (*ACCURACY, "mean_error") if f"{m}_mean" in group.columns]
    return shown + compute_columns(group)


def counted(counter: Counter, noun: str) -> str:
    if not counter:
        return f"no {noun}s"
    items = [f"{n} {reason}" for reason, n in sorted(counter.items())]
    total = sum(counter.values())
    return f"{total} {noun}{'s' if total != 1 else ''} ({', '.join(items)})"


def used_sentence(board: pd.DataFrame, parents_total: int, skipped: Counter, skipped_seeds: Counter) -> str:
    """Which runs the report used, and which it skipped and why."""
    shown, seeds = len(board), int(board["seeds"].sum())
    others = parents_total - shown
    text = f"Used {shown} finished protocol run{'s' if shown != 1 else ''} ({seeds} seed runs)"
    if others:
        text += (f", plus {others} other finished config{'s' if others != 1 else ''} of the same methods"
                 " not shown (ranked lower)")
    left_out = ([counted(skipped, "protocol run")] if skipped else []) + (
        [f"{counted(skipped_seeds, 'seed run')} of finished protocol runs"] if skipped_seeds else [])
    return text + (". Skipped " + " and ".join(left_out) if left_out else ". No runs skipped") + "."
