"""Report figures with matplotlib's object API (no pyplot state, Agg canvas), as embedded PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fluxbench.protocols.metrics import mean_std_ci, step_accuracies
from fluxbench.reports.tables import domain_columns, label

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569",
           "#ea580c")
INK, GRID = "#1f2937", "#e5e7eb"


def colors(methods: Sequence[str]) -> dict[str, str]:
    """The same colour for a method in every figure."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(set(methods)))}


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    fig.set_facecolor("white")
    return fig


def style(ax) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=INK, labelsize=9)


def data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def seed_rows(seeds: pd.DataFrame, parent_id: str) -> pd.DataFrame:
    return seeds[(seeds["parent_id"] == parent_id) & seeds["matrix"].notna()]


def accuracy_curves(group: pd.DataFrame, seeds: pd.DataFrame, palette: dict[str, str]) -> str | None:
    """Accuracy on all seen classes after each experience: mean over seeds, band = ± std (the table has the CI)."""
    fig = figure(6.4, 3.6)
    ax = fig.add_subplot()
    drawn = False
    for _, row in group.iterrows():
        runs = seed_rows(seeds, row["run_id"])
        if runs.empty:
            continue
        curves = np.array([step_accuracies(r.matrix, r.sizes) for r in runs.itertuples()]) * 100
        summary = [mean_std_ci(curves[:, i]) for i in range(curves.shape[1])]
        mean = np.array([s["mean"] for s in summary])
        half = np.array([s["std"] for s in summary])
        x = np.arange(1, len(mean) + 1)
        color = palette[row["method"]]
        ax.plot(x, mean, marker="o", markersize=4, color=color, label=row["method"], linewidth=2)
        ax.fill_between(x, np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100), color=color, alpha=0.15,
                        linewidth=0)
        ax.set_xticks(x)
        drawn = True
    if not drawn:
        return None
    style(ax)
    ax.set_xlabel("after experience", color=INK)
    ax.set_ylabel("accuracy on seen classes (%)", color=INK)
    ax.set_ylim(0, 102)
    ax.legend(frameon=False, fontsize=9)
    return data_uri(fig)


def _heatmap(ax, R: np.ndarray, title: str) -> object:
    image = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
    T = R.shape[0]
    if T <= 10:
        for i in range(T):
            for j in range(T):
                if not np.isnan(R[i, j]):
                    ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if R[i, j] < 0.6 else INK)
    ax.set_title(title, fontsize=10, color=INK)
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)], fontsize=7)
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)], fontsize=7)
    ax.set_xlabel("tested on experience", fontsize=8)
    ax.set_ylabel("after training on", fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image


def matrix_heatmaps(group: pd.DataFrame, seeds: pd.DataFrame) -> str | None:
    """The accuracy matrix R[i, j] of each method, averaged over seeds (blank: not evaluated)."""
    mats = []
    for _, row in group.iterrows():
        runs = seed_rows(seeds, row["run_id"])
        shapes = {r.matrix.shape for r in runs.itertuples()}
        if len(shapes) == 1:
            stack = np.stack([r.matrix for r in runs.itertuples()])
            with warnings.catch_warnings():  # all-NaN cells (never evaluated) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(stack, axis=0)
            mats.append((f"{row['method']} (#{row['rank']})", mean))
    if not mats:
        return None
    cols = min(len(mats), 4)
    rows = math.ceil(len(mats) / cols)
    fig = figure(2.9 * cols + 0.8, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax, (title, R) in zip(axes.flat, mats):
        image = _heatmap(ax, R, title)
    for ax in axes.flat[len(mats):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
    return data_uri(fig)


def _errorbars(ax, group: pd.DataFrame, x_metric: str, y_metric: str, palette: dict[str, str]) -> None:
    scale_y = 100.0
    for _, row in group.iterrows():
        x, y = row.get(f"{x_metric}_mean"), row.get(f"{y_metric}_mean")
        if pd.isna(x) or pd.isna(y):
            continue
        yerr = row.get(f"{y_metric}_ci95")
        yerr = row.get(f"{y_metric}_std") if pd.isna(yerr) else yerr
        xerr = row.get(f"{x_metric}_std")
        color = palette[row["method"]]
        ax.errorbar(x, y * scale_y, xerr=None if pd.isna(xerr) else xerr,
                    yerr=None if pd.isna(yerr) else yerr * scale_y, fmt="o", color=color, markersize=8,
                    capsize=3, elinewidth=1.2)
        ax.annotate(row["method"], (x, y * scale_y), textcoords="offset points", xytext=(7, 5), fontsize=9,
                    color=color)
    style(ax)
    ax.set_xlabel(label(x_metric), color=INK)
    ax.set_ylabel(label(y_metric), color=INK)


def accuracy_vs_compute(group: pd.DataFrame, compute: Sequence[str], palette: dict[str, str]) -> str | None:
    """The ranking metric against each logged compute measure (error bars: 95% CI, std for one seed)."""
    y_metric = group["ranked_by"].iloc[0]
    compute = [c for c in compute if group.get(f"{c}_mean", pd.Series(dtype=float)).notna().any()]
    if not compute or f"{y_metric}_mean" not in group:
        return None
    fig = figure(3.4 * len(compute) + 0.4, 3.2)
    axes = fig.subplots(1, len(compute), squeeze=False)[0]
    for ax, metric in zip(axes, compute):
        _errorbars(ax, group, metric, y_metric, palette)
        ax.margins(x=0.25)
        ax.set_ylim(0, 102)
    return data_uri(fig)


def domain_heatmap(group: pd.DataFrame) -> str | None:
    """TTA: mean error per domain (rows: methods in rank order)."""
    domains = domain_columns(group.dropna(axis=1, how="all"))
    if not domains:
        return None
    E = np.array([[row.get(f"{d}_mean", np.nan) for d in domains] for _, row in group.iterrows()], dtype=float)
    fig = figure(max(4.0, 0.55 * len(domains) + 2.0), 0.45 * len(group) + 1.8)
    ax = fig.add_subplot()
    image = ax.imshow(E * 100, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
    for i in range(E.shape[0]):
        for j in range(E.shape[1]):
            if not np.isnan(E[i, j]):
                ax.text(j, i, f"{100 * E[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if E[i, j] > 0.5 else INK)
    ax.set_xticks(range(len(domains)), [label(d) for d in domains], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(group)), list(group["method"]), fontsize=9)
    fig.colorbar(image, ax=ax, label="error (%)")
    return data_uri(fig)


def two_phase_slopes(tp: pd.DataFrame, palette: dict[str, str]) -> str:
    """Conventional (phase-1 best) vs two-phase score per method: a falling accuracy (or rising error) line is an
    overestimate."""
    metric = tp["metric"].iloc[0]
    fig = figure(5.2, 3.8)
    ax = fig.add_subplot()
    for _, r in tp.iterrows():
        color = palette[r["method"]]
        ys = [100 * r["conventional"], 100 * r["two_phase"]]
        ax.plot([0, 1], ys, marker="o", markersize=7, color=color, linewidth=2.2)
        ax.annotate(f"{r['method']} #{r['rank_conventional']}", (0, ys[0]), textcoords="offset points",
                    xytext=(-8, 0), ha="right", va="center", fontsize=9, color=color)
        ax.annotate(f"#{r['rank_two_phase']} {r['method']} ({ys[1] - ys[0]:+.1f})", (1, ys[1]),
                    textcoords="offset points", xytext=(8, 0), ha="left", va="center", fontsize=9, color=color)
    style(ax)
    ax.set_xlim(-0.6, 1.6)
    ax.set_xticks([0, 1], ["conventional\n(phase-1 best)", "two-phase\n(phase 2)"])
    ax.set_ylabel(label(metric), color=INK)
    ax.grid(False, axis="x")
    return data_uri(fig)


def preference_sweep(curves: dict[str, dict[str, np.ndarray]], palette: dict[str, str]) -> str | None:
    """Two tasks, ``w = (t, 1 - t)``: accuracy on task 1 and on task 2 against ``t`` (mean over seeds), per method;
    a model that follows the preference rises on task 1 and falls on task 2."""
    if not curves:
        return None
    fig = figure(8.4, 3.3)
    axes = fig.subplots(1, 2, sharey=True)
    for method, c in sorted(curves.items()):
        for task, ax in enumerate(axes):
            ax.plot(c["t"], 100 * c["acc"][:, task], marker="o", markersize=3, linewidth=2, color=palette[method],
                    label=method)
    for task, ax in enumerate(axes):
        style(ax)
        ax.set_title(f"accuracy on task {task + 1}", fontsize=10, color=INK)
        ax.set_xlabel("t: weight of task 1 in w = (t, 1 - t)", color=INK)
    axes[0].set_ylabel("accuracy (%)", color=INK)
    axes[0].legend(frameon=False, fontsize=9)
    return data_uri(fig)


def update_paths(paths: dict[str, np.ndarray], palette: dict[str, str]) -> str | None:
    """Continual pretraining: each method's (A_ZS, A_KA) after every task (mean over seeds), from the zero-shot
    point (star) to the final model (large dot); up is knowledge gained, left is zero-shot ability lost."""
    if not paths:
        return None
    fig = figure(6.4, 4.6)
    ax = fig.add_subplot()
    for method, path in sorted(paths.items()):
        xs, ys, color = 100 * path[:, 0], 100 * path[:, 1], palette[method]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=2, color=color, label=method)
        ax.plot(xs[-1], ys[-1], marker="o", markersize=9, color=color)
        ax.plot(xs[0], ys[0], marker="*", markersize=14, color=INK, zorder=3)
        for t in range(1, len(path)):
            ax.annotate(str(t), (xs[t], ys[t]), textcoords="offset points", xytext=(5, 4), fontsize=7, color=color)
    ax.annotate("zero-shot", (xs[0], ys[0]), textcoords="offset points", xytext=(8, -12), fontsize=8, color=INK)
    style(ax)
    ax.margins(0.15)
    ax.set_xlabel("A_ZS: zero-shot retention (%)", color=INK)
    ax.set_ylabel("A_KA: knowledge accumulation (%)", color=INK)
    ax.legend(frameon=False, fontsize=9)
    return data_uri(fig)
