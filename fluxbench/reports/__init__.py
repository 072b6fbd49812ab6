"""Leaderboard and plots from MLflow runs only (``fluxbench report``); reports never import methods."""

from fluxbench.reports.build import Report, build, write

__all__ = ["Report", "build", "write"]
