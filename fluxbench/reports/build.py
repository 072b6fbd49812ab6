"""Collect, tabulate and write: the report as files (``leaderboard.md``, ``leaderboard.csv``, ``index.html``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fluxbench.errors import DataError
from fluxbench.reports import html, markdown
from fluxbench.reports.collect import Collected, collect
from fluxbench.reports.format import cell, used_sentence
from fluxbench.reports.mtil import mtil_table
from fluxbench.reports.preference import preference_table, sweeps
from fluxbench.reports.pretraining import pretraining_table, update_paths
from fluxbench.reports.reproduction import points, reproduction_table
from fluxbench.reports.tables import GROUP, label, leaderboard, seed_metrics, two_phase_table


@dataclass
class Report:
    collected: Collected
    board: pd.DataFrame
    two_phase: pd.DataFrame
    generated: str
    reproduction: pd.DataFrame  # runs of conf/experiment/ presets against their published figures
    preference: pd.DataFrame = field(default_factory=pd.DataFrame)  # protocol=preference: per-task table
    sweeps: dict = field(default_factory=dict)  # protocol=preference: (benchmark, method) -> two-task sweep
    mtil: pd.DataFrame = field(default_factory=pd.DataFrame)  # protocol=mtil: Transfer/Average/Last, rank per task
    pretraining: pd.DataFrame = field(default_factory=pd.DataFrame)  # protocol=continual_pretraining: per method
    paths: dict = field(default_factory=dict)  # protocol=continual_pretraining: (benchmark, method) -> (A_ZS, A_KA)

    @property
    def title(self) -> str:
        return f"fluxbench leaderboard: {self.collected.experiment}"

    @property
    def source(self) -> str:
        return f"experiment {self.collected.experiment!r} in {self.collected.uri}; generated {self.generated}"

    @property
    def used(self) -> str:
        c = self.collected
        return used_sentence(self.board, len(c.parents), c.skipped, c.skipped_seeds)


def build(uri: str, experiment: str) -> Report:
    """Everything a report shows, from the MLflow store alone."""
    collected = collect(uri, experiment)
    per_seed = seed_metrics(collected.seeds)
    board = leaderboard(collected.parents, per_seed)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    paths = update_paths(uri, board, collected.seeds)
    return Report(collected, board, two_phase_table(board, collected.parents), generated,
                  reproduction_table(collected.parents, per_seed),
                  preference_table(collected.parents, collected.seeds),
                  sweeps(uri, collected.parents, collected.seeds),
                  mtil=mtil_table(uri, collected.parents, collected.seeds),
                  pretraining=pretraining_table(board, paths), paths=paths)


def write(report: Report, out: Path) -> list[Path]:
    """Write the three files (and ``two_phase.csv`` / ``reproduction.csv`` / ``preference.csv`` / ``mtil.csv`` /
    ``continual_pretraining.csv`` when there are such runs) into ``out``."""
    files = {
        "leaderboard.md": markdown.render(report.title, report.source, report.used, report.board, report.two_phase,
                                          report.reproduction, report.preference, report.mtil, report.pretraining),
        "leaderboard.csv": report.board.to_csv(index=False),
        "index.html": html.render(report.title, report.source, report.used, report.board, report.collected.seeds,
                                  report.two_phase, report.reproduction, report.preference, report.sweeps,
                                  report.mtil, report.pretraining, report.paths),
    }
    if not report.two_phase.empty:
        files["two_phase.csv"] = report.two_phase.to_csv(index=False)
    if not report.reproduction.empty:
        files["reproduction.csv"] = report.reproduction.to_csv(index=False)
    if not report.preference.empty:
        files["preference.csv"] = report.preference.to_csv(index=False)
    if not report.mtil.empty:
        files["mtil.csv"] = report.mtil.to_csv(index=False)
    if not report.pretraining.empty:
        files["continual_pretraining.csv"] = report.pretraining.to_csv(index=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot write the report to {out}: {err.strerror or err}; pass another --out DIR") from err
    return [out / name for name in files]


def summary_lines(report: Report) -> list[str]:
    """A few lines for the terminal: the ranking of each benchmark x protocol."""
    lines = []
    for (benchmark, protocol), g in report.board.groupby(GROUP, sort=True):
        metric = g["ranked_by"].iloc[0]
        lines.append(f"{benchmark} · {protocol} (ranked by {label(metric)}):")
        lines += [f"  {r['rank']}. {r['method']:<16} {cell(r, metric)}  ({r['seeds']} seeds)" for _, r in g.iterrows()]
    for _, r in report.two_phase.iterrows():
        lines.append(f"two-phase {r['benchmark']}: {r['method']} conventional rank {r['rank_conventional']} -> "
                     f"two-phase rank {r['rank_two_phase']}, gap {100 * r['gap']:+.2f} points")
    for _, r in report.reproduction.iterrows():
        lines.append(f"reproduce {r['preset']}: {r['metric']} measured {points(r['measured'])}, published "
                     f"{points(r['published'])}, difference {points(r['difference'], True)}")
    return lines + [report.used]
