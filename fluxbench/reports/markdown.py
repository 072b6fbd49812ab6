"""``leaderboard.md``: the leaderboard, per-domain errors, conventional vs two-phase, reproduction, preferences,
and the runs used."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fluxbench.reports import mtil as M
from fluxbench.reports import preference as P
from fluxbench.reports import pretraining as C
from fluxbench.reports.format import LEGEND, cell, headline, number, si
from fluxbench.reports.reproduction import points, verdict
from fluxbench.reports.tables import GROUP, diverged_note, domain_columns, label


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    return "\n".join([line(header), "| " + " | ".join(align) + " |", *(line(r) for r in rows)])


def leaderboard_section(group: pd.DataFrame) -> str:
    metrics = headline(group)
    rows = [[str(r["rank"]), r["method"], *(cell(r, m, with_ci=m in ("last_accuracy", "avg_incremental_accuracy",
                                                                       "forgetting", "mean_error")) for m in metrics),
             str(r["seeds"])] for _, r in group.iterrows()]
    return table(["rank", "method", *(label(m) for m in metrics), "seeds"], rows)


def domain_section(group: pd.DataFrame) -> str:
    domains = domain_columns(group.dropna(axis=1, how="all"))
    rows = [[r["method"], *(number(r[f"{d}_mean"], d) for d in domains)] for _, r in group.iterrows()]
    return table(["method", *(label(d) for d in domains)], rows, text_columns=1)


def two_phase_section(tp: pd.DataFrame) -> list[str]:
    out = []
    for benchmark, g in tp.groupby("benchmark", sort=True):
        metric = g["metric"].iloc[0]
        rows = [[r["method"], number(r["conventional"], metric), number(r["two_phase"], metric) + diverged_note(r),
                 number(r["gap"], metric), str(r["rank_conventional"]), str(r["rank_two_phase"]),
                 f"{r['rank_change']:+d}"] for _, r in g.iterrows()]
        tau = g["kendall_tau"].iloc[0]
        out += [f"### {benchmark} ({label(metric)})", "",
                table(["method", "conventional", "two-phase", "gap", "rank conv.", "rank two-phase", "rank change"],
                      rows), "",
                f"Kendall tau between the two rankings: {'-' if pd.isna(tau) else f'{tau:.2f}'}", ""]
    return out


def reproduction_section(rep: pd.DataFrame) -> list[str]:
    rows = [[r["preset"], r["metric"], points(r["measured"]), points(r["published"]), points(r["difference"], True),
             points(r["tolerance"]), verdict(r), str(r["seeds"]), r["source"] or "-", str(r["run_id"])[:12]]
            for _, r in rep.iterrows()]
    return ["## Reproduction", "",
            "Runs of `fluxbench reproduce` presets: measured (mean over seeds, %) against the figure the preset "
            "carried when it ran; difference = measured - published; within = |difference| <= tolerance.", "",
            table(["preset", "metric", "measured", "published", "difference", "tolerance", "within", "seeds",
                   "source", "run"], rows, text_columns=2), ""]


def preference_section(pref: pd.DataFrame) -> list[str]:
    out = ["## Preferences (IBCL's evaluation)", "", P.NOTE, ""]
    for benchmark, g in pref.groupby("benchmark", sort=True):
        g = g.dropna(axis=1, how="all")
        out += [f"### {benchmark}", "", table(P.header(g), [P.cells(r, g) for _, r in g.iterrows()], 1), ""]
    return out


def mtil_section(table_: pd.DataFrame) -> list[str]:
    out = ["## MTIL / X-TAIL", "", M.NOTE, ""]
    for benchmark, g in table_.groupby("benchmark", sort=True):
        g = g.dropna(axis=1, how="all")
        out += [f"### {benchmark}", "", table(M.header(g), [M.cells(r, g) for _, r in g.iterrows()], 1), ""]
    return out


def pretraining_section(cpt: pd.DataFrame | None, benchmark: str) -> list[str]:
    rows = pd.DataFrame() if cpt is None or cpt.empty else cpt[cpt["benchmark"] == benchmark]
    return [C.NOTE, "", table(C.HEADER, [C.cells(r, si) for _, r in rows.iterrows()]), ""]


def runs_section(board: pd.DataFrame) -> str:
    rows = [[r["benchmark"], r["protocol"], r["method"], r["config_hash"], r["run_id"], r["seed_list"],
             str(r["configs"]), str(r["git_commit"])[:10]] for _, r in board.iterrows()]
    return table(["benchmark", "protocol", "method", "config hash", "run", "seeds", "configs", "git commit"], rows,
                 text_columns=8)


def render(title: str, source: str, used: str, board: pd.DataFrame, tp: pd.DataFrame,
           rep: pd.DataFrame | None = None, pref: pd.DataFrame | None = None, mtil: pd.DataFrame | None = None,
           cpt: pd.DataFrame | None = None) -> str:
    out = [f"# {title}", "", source, "", LEGEND + ".", ""]
    for (benchmark, protocol), g in board.groupby(GROUP, sort=True):
        out += [f"## {benchmark} · {protocol} (ranked by {label(g['ranked_by'].iloc[0])})", ""]
        out += (pretraining_section(cpt, benchmark) if protocol == C.PROTOCOL else [leaderboard_section(g), ""])
        if domain_columns(g.dropna(axis=1, how="all")):
            out += [f"### {benchmark} · {protocol}: error per domain (%)", "", domain_section(g), ""]
    if not tp.empty:
        out += ["## Conventional vs two-phase", "",
                "Conventional: the best phase-1 mean (tuned and scored on the same scenario). Two-phase: phase 2 "
                "with the chosen hyperparameters on the evaluation scenario. Gap = conventional - two-phase.", "",
                *two_phase_section(tp)]
    if rep is not None and not rep.empty:
        out += reproduction_section(rep)
    if pref is not None and not pref.empty:
        out += preference_section(pref)
    if mtil is not None and not mtil.empty:
        out += mtil_section(mtil)
    out += ["## Runs used", "", used, "", runs_section(board), ""]
    return "\n".join(out)
