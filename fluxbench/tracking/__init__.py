"""The one place that talks to MLflow: the run layout (:mod:`.layout`), writing runs and reading them back."""

from fluxbench.tracking.mlflow_store import RunHandle, SeedRecord, Tracker, config_hash, flatten

__all__ = ["RunHandle", "SeedRecord", "Tracker", "config_hash", "flatten"]
