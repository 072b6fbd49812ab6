"""``fluxbench report [--experiment NAME] [--out DIR] [--tracking-uri URI]``: the leaderboard from MLflow."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_URI = "sqlite:///mlflow.db"
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluxbench report",
        description="Build the leaderboard (Markdown, CSV, static HTML) from finished runs in an MLflow store. "
                    "Reads MLflow only; never re-runs training.")
    p.add_argument("--experiment", default="fluxbench", help="MLflow experiment name (default: %(default)s)")
    p.add_argument("--out", default="report", type=Path, help="output folder (default: %(default)s/)")
    p.add_argument("--tracking-uri", default=DEFAULT_URI, help="MLflow tracking URI (default: %(default)s)")
    return p


def report_command(args: list[str]) -> None:
    """Parse ``args``, build the report, write it and print the rankings; errors are FluxbenchError (one line)."""
    from fluxbench.reports.build import build, summary_lines, write

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, value in _HTTP_DEFAULTS.items():  # an unreachable server fails in seconds, not after 4 minutes
        os.environ.setdefault(name, value)
    ns = parser().parse_args(args)
    report = build(ns.tracking_uri, ns.experiment)
    paths = write(report, ns.out)
    print("\n".join(summary_lines(report)))
    print("wrote " + ", ".join(str(p) for p in paths))
