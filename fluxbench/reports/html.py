"""``index.html``: one static page that works offline (inline CSS, figures as data URIs, no scripts)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

import pandas as pd

from fluxbench.reports import mtil as M
from fluxbench.reports import plots
from fluxbench.reports import preference as P
from fluxbench.reports import pretraining as C
from fluxbench.reports.format import LEGEND, headline, number, parts, si
from fluxbench.reports.reproduction import points, verdict
from fluxbench.reports.tables import GROUP, compute_columns, diverged_note, label

CSS = """
:root{--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 24px 48px}
h1{font-size:28px;margin:0 0 4px}
h2{font-size:20px;margin:0 0 2px;display:flex;align-items:center;gap:10px}
h3{font-size:16px;margin:22px 0 8px;color:#374151;font-weight:600}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef0f3;padding:1px 5px;
border-radius:4px}
.meta,.sub,.legend{color:var(--muted);font-size:13px;margin:0}
.used{background:#eef4ff;border:1px solid #d6e4ff;border-radius:8px;padding:10px 14px;margin:16px 0 0;font-size:14px}
nav{margin:18px 0 6px;display:flex;flex-wrap:wrap;gap:8px}
nav a{font-size:13px;color:var(--accent);text-decoration:none;border:1px solid var(--line);background:var(--card);
padding:3px 10px;border-radius:999px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:22px 24px;margin:22px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
.pill{font-size:12px;font-weight:600;color:#1e40af;background:#dbeafe;padding:2px 9px;border-radius:999px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;margin:12px 0 4px;font-variant-numeric:tabular-nums;font-size:14px}
th{font-size:12.5px;color:var(--muted);font-weight:600;text-align:right;
padding:8px 10px;border-bottom:2px solid var(--line);white-space:nowrap}
td{padding:8px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
table.leaderboard :is(th,td):nth-child(-n+2),table.two-phase :is(th,td):first-child,
table.runs :is(th,td),table.reproduction :is(th,td):nth-child(-n+2),table.preference :is(th,td):first-child{
text-align:left}
td{vertical-align:top}
tbody tr:hover{background:#f9fafb}
td.method{font-weight:600}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:8px;vertical-align:0}
.rank{display:inline-block;min-width:26px;text-align:center;border-radius:6px;background:#f3f4f6;font-weight:700;
padding:1px 6px}
.r1{background:#fde68a;color:#78350f}
.pm{color:var(--muted)}
.ci{color:#9ca3af;font-size:11.5px}
.best{font-weight:700}
.up{color:#047857;font-weight:600}.down{color:#b91c1c;font-weight:600}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px;margin-top:16px}
figure{margin:0;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fff}
figure.wide{grid-column:1/-1}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:13px;color:var(--muted);margin-top:6px}
footer{color:var(--muted);font-size:12px;margin-top:28px}
"""


def slug(*words: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", " ".join(words).lower()).strip("-")


def value_cell(row: pd.Series, metric: str, best: bool, with_ci: bool = True) -> str:
    mean, std, ci = parts(row, metric)
    if mean == "-":
        return "<td>-</td>"
    ci_html = f'<br><span class="ci">95% CI ±{ci}</span>' if with_ci and ci != "-" else ""
    return f'<td{" class=best" if best else ""}>{mean} <span class="pm">± {std}</span>{ci_html}</td>'


def best_values(group: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """The best mean per accuracy/error column (compute columns are not judged)."""
    lower = {"forgetting", "mean_error"}
    out = {}
    for m in metrics:
        col = group.get(f"{m}_mean")
        if col is None or col.isna().all() or m in compute_columns(group):
            continue
        out[m] = col.min() if m in lower else col.max()
    return out


def leaderboard_table(group: pd.DataFrame, palette: dict[str, str]) -> str:
    metrics = headline(group)
    best = best_values(group, metrics)
    compute = compute_columns(group)
    head = "".join(f"<th>{escape(label(m))}</th>" for m in metrics)
    body = []
    for _, r in group.iterrows():
        rank_class = "rank r1" if r["rank"] == 1 else "rank"
        cells = "".join(value_cell(r, m, m in best and r.get(f"{m}_mean") == best[m], m not in compute)
                        for m in metrics)
        body.append(f'<tr><td><span class="{rank_class}">{r["rank"]}</span></td>'
                    f'<td class="method"><span class="dot" style="background:{palette[r["method"]]}"></span>'
                    f'{escape(r["method"])}</td>{cells}<td>{r["seeds"]}</td></tr>')
    return (f'<div class="scroll"><table class="leaderboard"><thead><tr><th>rank</th><th>method</th>{head}'
            f'<th>seeds</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def figure_html(uri: str | None, caption: str, wide: bool = False) -> str:
    if uri is None:
        return ""
    return (f'<figure{" class=wide" if wide else ""}><img src="{uri}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def pretraining_table(rows: pd.DataFrame, palette: dict[str, str]) -> str:
    """The continual-pretraining leaderboard: final A_KA, A_ZS, gmean, the zero-shot point, steps and FLOPs."""
    head = "".join(f"<th>{escape(h)}</th>" for h in C.HEADER)
    body = []
    for _, r in rows.iterrows():
        rank, method, *rest = C.cells(r, si)
        body.append(f'<tr><td><span class="{"rank r1" if r["rank"] == 1 else "rank"}">{rank}</span></td>'
                    f'<td class="method"><span class="dot" style="background:{palette[method]}"></span>'
                    f'{escape(method)}</td>' + "".join(f"<td>{escape(c)}</td>" for c in rest) + "</tr>")
    return (f'<div class="scroll"><table class="leaderboard pretraining"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p class="legend">{escape(C.NOTE)}</p>')


def pretraining_parts(benchmark: str, cpt: pd.DataFrame | None, paths: dict | None,
                      palette: dict[str, str]) -> tuple[str, list[str]]:
    rows = pd.DataFrame() if cpt is None or cpt.empty else cpt[cpt["benchmark"] == benchmark]
    curves = {m: p for (b, m), p in (paths or {}).items() if b == benchmark}
    fig = figure_html(plots.update_paths(curves, palette), "Update paths in (A_ZS, A_KA): the zero-shot point (star), "
                      "then one point per task (mean over seeds); the large dot is the final model", wide=True)
    return pretraining_table(rows, palette), [fig]


def group_section(key: tuple[str, str], group: pd.DataFrame, seeds: pd.DataFrame, palette: dict[str, str],
                  cpt: pd.DataFrame | None = None, paths: dict | None = None) -> str:
    benchmark, protocol = key
    ranked_by = label(group["ranked_by"].iloc[0])
    if protocol == C.PROTOCOL:
        table, figs = pretraining_parts(benchmark, cpt, paths, palette)
    else:
        table, figs = leaderboard_table(group, palette), generic_figures(group, seeds, palette, ranked_by)
    return (f'<section class="card" id="{slug(benchmark, protocol)}"><h2>{escape(benchmark)} '
            f'<span class="pill">{escape(protocol)}</span></h2><p class="sub">ranked by {escape(ranked_by)}; '
            f"{len(group)} method{'s' if len(group) != 1 else ''}</p>{table}"
            f'<div class="figs">{"".join(figs)}</div></section>')


def generic_figures(group: pd.DataFrame, seeds: pd.DataFrame, palette: dict[str, str], ranked_by: str) -> list[str]:
    return [
        figure_html(plots.accuracy_curves(group, seeds, palette), "Accuracy on all seen classes after each "
                    "experience (mean over seeds; band: ± std)"),
        figure_html(plots.accuracy_vs_compute(group, compute_columns(group), palette),
                    f"{ranked_by} against compute (bars: 95% CI over seeds)"),
        figure_html(plots.matrix_heatmaps(group, seeds), "Accuracy matrix R[i, j]: accuracy on experience j after "
                    "training on experience i, mean over seeds", wide=True),
        figure_html(plots.domain_heatmap(group), "Error per domain (%), mean over seeds", wide=True),
    ]


def two_phase_section(tp: pd.DataFrame, palette: dict[str, str]) -> str:
    blocks = []
    for benchmark, g in tp.groupby("benchmark", sort=True):
        metric = g["metric"].iloc[0]
        rows = []
        for _, r in g.iterrows():
            change = int(r["rank_change"])
            arrow = f'<span class="{"up" if change > 0 else "down"}">{change:+d}</span>' if change else "0"
            rows.append(f'<tr><td><span class="dot" style="background:{palette[r["method"]]}"></span>'
                        f'{escape(r["method"])}</td><td>{number(r["conventional"], metric)}</td>'
                        f'<td>{number(r["two_phase"], metric)}{escape(diverged_note(r))}</td>'
                        f'<td>{number(r["gap"], metric)}</td>'
                        f'<td>{r["rank_conventional"]}</td><td>{r["rank_two_phase"]}</td><td>{arrow}</td></tr>')
        tau = g["kendall_tau"].iloc[0]
        tau_text = "-" if pd.isna(tau) else f"{tau:.2f}"
        blocks.append(
            f'<h3>{escape(benchmark)} · {escape(label(metric))}</h3><div class="scroll"><table class="two-phase">'
            "<thead><tr><th>method</th><th>conventional</th><th>two-phase</th><th>gap</th><th>rank conv.</th>"
            f'<th>rank two-phase</th><th>rank change</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="sub">Kendall τ between the two rankings: <b>{tau_text}</b></p><div class="figs">'
            + figure_html(plots.two_phase_slopes(g, palette), "Conventional vs two-phase score; the number in "
                          "brackets is the change (a drop in accuracy, or a rise in error, means the "
                          "conventional protocol overestimated it)")
            + "</div>")
    return ('<section class="card" id="two-phase"><h2>Conventional vs two-phase</h2><p class="sub">Conventional: '
            "best phase-1 mean, tuned and scored on the same scenario. Two-phase: phase 2 with the chosen "
            "hyperparameters on different data. Gap = conventional − two-phase.</p>" + "".join(blocks) + "</section>")


def reproduction_section(rep: pd.DataFrame) -> str:
    rows = []
    for _, r in rep.iterrows():
        mark = verdict(r)
        css = {"yes": ' class="up"', "no": ' class="down"'}.get(mark, "")
        rows.append(f"<tr><td>{escape(r['preset'])}</td><td>{escape(r['metric'])}</td><td>{points(r['measured'])}</td>"
                    f"<td>{points(r['published'])}</td><td>{points(r['difference'], True)}</td>"
                    f"<td>{points(r['tolerance'])}</td><td{css}>{mark}</td><td>{r['seeds']}</td>"
                    f"<td>{escape(r['source'] or '-')}</td><td><code>{escape(str(r['run_id'])[:12])}</code></td></tr>")
    return ('<section class="card" id="reproduction"><h2>Reproduction</h2><p class="sub">Runs of '
            "<code>fluxbench reproduce</code> presets: measured (mean over seeds, %) against the figure the preset "
            "carried when it ran; difference = measured − published; within = |difference| ≤ tolerance.</p>"
            '<div class="scroll"><table class="reproduction"><thead><tr><th>preset</th><th>metric</th>'
            "<th>measured</th><th>published</th><th>difference</th><th>tolerance</th><th>within</th><th>seeds</th>"
            f'<th>source</th><th>run</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def preference_section(pref: pd.DataFrame, sweeps: dict, palette: dict[str, str]) -> str:
    blocks = []
    for benchmark, g in pref.groupby("benchmark", sort=True):
        g = g.dropna(axis=1, how="all")
        head = "".join(f"<th>{escape(h)}</th>" for h in P.header(g))
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in P.cells(r, g)) + "</tr>"
                       for _, r in g.iterrows())
        curves = {m: c for (b, m), c in sweeps.items() if b == benchmark}
        blocks.append(
            f'<h3>{escape(benchmark)}</h3><div class="scroll"><table class="preference"><thead><tr>{head}</tr>'
            f'</thead><tbody>{body}</tbody></table></div><div class="figs">'
            + figure_html(plots.preference_sweep(curves, palette), "Preference sweep after task 2: w = (t, 1 - t), "
                          "accuracy on each task against t (mean over sampled models and seeds)", wide=True)
            + "</div>")
    return ('<section class="card" id="preference"><h2>Preferences</h2>'
            f'<p class="sub">{escape(P.NOTE)}</p>' + "".join(blocks) + "</section>")


def mtil_section(table: pd.DataFrame) -> str:
    blocks = []
    for benchmark, g in table.groupby("benchmark", sort=True):
        g = g.dropna(axis=1, how="all")
        head = "".join(f"<th>{escape(h)}</th>" for h in M.header(g))
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in M.cells(r, g)) + "</tr>"
                       for _, r in g.iterrows())
        blocks.append(f'<h3>{escape(benchmark)}</h3><div class="scroll"><table class="preference"><thead><tr>{head}'
                      f"</tr></thead><tbody>{body}</tbody></table></div>")
    return ('<section class="card" id="mtil"><h2>MTIL / X-TAIL</h2>'
            f'<p class="sub">{escape(M.NOTE)}</p>' + "".join(blocks) + "</section>")


def runs_section(board: pd.DataFrame, used: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(r['benchmark'])}</td><td>{escape(r['protocol'])}</td><td>{escape(r['method'])}</td>"
        f"<td><code>{escape(str(r['config_hash']))}</code></td><td><code>{escape(str(r['run_id'])[:12])}</code></td>"
        f"<td>{escape(str(r['seed_list']))}</td><td>{r['configs']}</td><td><code>{escape(str(r['git_commit'])[:10])}"
        "</code></td></tr>" for _, r in board.iterrows())
    return ('<section class="card" id="runs"><h2>Runs used</h2>'
            f'<p class="sub">{escape(used)}</p><div class="scroll"><table class="runs"><thead><tr><th>benchmark</th>'
            "<th>protocol</th><th>method</th><th>config hash</th><th>run</th><th>seeds</th><th>configs</th>"
            f"<th>git commit</th></tr></thead><tbody>{rows}</tbody></table></div></section>")


def render(title: str, source: str, used: str, board: pd.DataFrame, seeds: pd.DataFrame, tp: pd.DataFrame,
           rep: pd.DataFrame | None = None, pref: pd.DataFrame | None = None, sweeps: dict | None = None,
           mtil: pd.DataFrame | None = None, cpt: pd.DataFrame | None = None, paths: dict | None = None
           ) -> str:
    """The whole page as one string."""
    palette = plots.colors(board["method"])
    groups = list(board.groupby(GROUP, sort=True))
    links = [f'<a href="#{slug(*key)}">{escape(key[0])} · {escape(key[1])}</a>' for key, _ in groups]
    if not tp.empty:
        links.append('<a href="#two-phase">conventional vs two-phase</a>')
    if rep is not None and not rep.empty:
        links.append('<a href="#reproduction">reproduction</a>')
    has_pref = pref is not None and not pref.empty
    if has_pref:
        links.append('<a href="#preference">preferences</a>')
    has_mtil = mtil is not None and not mtil.empty
    if has_mtil:
        links.append('<a href="#mtil">MTIL / X-TAIL</a>')
    links.append('<a href="#runs">runs used</a>')
    sections = [group_section(key, g, seeds, palette, cpt, paths) for key, g in groups]
    if not tp.empty:
        sections.append(two_phase_section(tp, palette))
    if rep is not None and not rep.empty:
        sections.append(reproduction_section(rep))
    if has_pref:
        sections.append(preference_section(pref, sweeps or {}, palette))
    if has_mtil:
        sections.append(mtil_section(mtil))
    sections.append(runs_section(board, used))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><main><header><h1>{escape(title)}</h1>"
            f'<p class="meta">{escape(source)}</p><p class="used">{escape(used)}</p></header>'
            f'<nav>{"".join(links)}</nav>{"".join(sections)}<footer>{escape(LEGEND)}. Built from the MLflow store '
            "only; nothing was re-run.</footer></main></body></html>\n")
