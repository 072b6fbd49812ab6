"""``fluxbench reproduce``: the published configurations in ``conf/experiment/``, run and compared.

A preset is a Hydra ``experiment`` file (``# @package _global_``) that picks protocol, method, benchmark and
backbone, sets the paper's values, and carries the figure it should reach in its ``reproduce:`` node (schema:
``conf/schema.py`` ``ReproduceSchema``; ``published: null`` with a ``note`` where the specs mark no figure as
verified). ``fluxbench reproduce NAME [key=value ...]`` is ``fluxbench run +experiment=NAME [key=value ...]``
through the same code, then prints measured, published and their difference. The parent run carries the preset's
name and figure as tags (``tracking/layout.py``), so the report's reproduction table reads the store alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fluxbench.errors import ConfigError, DataError

EXPERIMENTS = Path(__file__).resolve().parent / "conf" / "experiment"


@dataclass(frozen=True)
class Figure:
    """A preset's published figure; values in percent, as papers print them."""

    name: str
    metric: str
    published: float | None
    tolerance: float | None = None
    source: str = ""
    note: str = ""
    also: dict[str, float] = field(default_factory=dict)

    def targets(self) -> dict[str, float | None]:
        """Every published metric of the row, the headline one first."""
        return {self.metric: self.published, **self.also}


def preset_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def check_name(name: str) -> None:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")


def load_figure(name: str) -> Figure:
    """The ``reproduce:`` node of ``conf/experiment/<name>.yaml`` (read as data, without composing)."""
    check_name(name)
    node = (yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()) or {}).get("reproduce")
    if not node or node.get("name") != name or "metric" not in node:
        raise ConfigError(f"conf/experiment/{name}.yaml needs a reproduce: node with name: {name} and a metric")
    return Figure(name, node["metric"], node.get("published"), node.get("tolerance"), node.get("source", ""),
                  node.get("note", ""), dict(node.get("also") or {}))


def listing() -> str:
    """One line per preset: its metric and published figure (or why there is none), and where it comes from."""
    figures = [load_figure(n) for n in preset_names()]
    width = max(len(f.name) for f in figures)
    lines = []
    for f in figures:
        if f.published is None:
            what = f"{f.metric}: no verified figure ({f.note or 'none given'})"
        else:
            tol = f" ±{f.tolerance:g}" if f.tolerance is not None else ""
            also = "".join(f", {m} {v:g}" for m, v in f.also.items())
            what = f"{f.metric} {f.published:g}{tol}{also}  [{f.source}]"
        lines.append(f"{f.name:<{width}}  {what}")
    return "\n".join(["presets (fluxbench reproduce NAME [key=value ...]; figures in %):", *lines])


def within(difference: float, tolerance: float | None) -> bool | None:
    """Whether a difference (points) is within tolerance; None when the preset gives none."""
    return None if tolerance is None or math.isnan(difference) else abs(difference) <= tolerance


def comparison_lines(figure: Figure, measured: Mapping[str, float]) -> list[str]:
    """``measured``, ``published`` and ``difference`` per published metric; measured values are fractions."""
    lines = [f"reproduce {figure.name}:"]
    for metric, published in figure.targets().items():
        value = 100 * measured.get(metric, math.nan)
        lines.append(f"  {metric} measured:   {value:.2f}")
        if published is None:
            lines.append(f"  {metric} published:  none ({figure.note or 'no verified figure'})")
            continue
        diff = value - float(published)
        verdict = within(diff, figure.tolerance)
        judged = "" if verdict is None else (f"  (within ±{figure.tolerance:g})" if verdict
                                             else f"  (outside ±{figure.tolerance:g})")
        lines += [f"  {metric} published:  {float(published):.2f}  [{figure.source}]",
                  f"  {metric} difference: {diff:+.2f}{judged}"]
    if figure.published is not None and figure.note:
        lines.append(f"  note: {figure.note}")
    return lines


def measured_metrics(outcome: Mapping[str, Any], figure: Figure) -> dict[str, float]:
    """The parent run's mean over seeds of each published metric, read back from the store (also when the run was
    skipped because that exact config had finished before)."""
    from fluxbench.tracking.reading import StoreReader

    result, tracking = outcome["result"], outcome["cfg"]["tracking"]
    parent = StoreReader(tracking["uri"]).run(result["run_id"])
    missing = [m for m in figure.targets() if f"{m}_mean" not in parent.metrics]
    if len(missing) == len(figure.targets()):
        raise DataError(f"run {result['run_id']} logged no {missing[0]}_mean; the preset's metric must be one its "
                        "protocol aggregates")
    return {m: parent.metrics[f"{m}_mean"] for m in figure.targets() if m not in missing}


def reproduce_command(args: list[str], run: Callable[[list[str]], dict[str, Any] | None]) -> None:
    """``fluxbench reproduce``: list the presets, or run one through ``run`` (the ``fluxbench run`` path)."""
    if not args or args[0] in ("-h", "--help", "--list"):
        print(listing())
        return
    name, overrides = args[0], args[1:]
    check_name(name)
    if any(a in ("-m", "--multirun") or a.startswith("+experiment=") for a in overrides):
        raise ConfigError("fluxbench reproduce runs one preset once; use fluxbench run -m +experiment=NAME to sweep")
    figure = load_figure(name)
    outcome = run([f"+experiment={name}", *overrides])
    if outcome is None:
        raise DataError(f"preset {name} did not run")
    print("\n".join(comparison_lines(figure, measured_metrics(outcome, figure))))
