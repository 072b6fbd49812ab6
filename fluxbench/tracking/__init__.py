"""The one place that talks to MLflow."""

from fluxbench.tracking.mlflow_store import RunHandle, Tracker, config_hash, flatten

__all__ = ["RunHandle", "Tracker", "config_hash", "flatten"]
