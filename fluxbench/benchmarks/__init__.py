"""Readers for real on-disk data formats; each registers itself by name."""

from fluxbench.benchmarks import digits  # noqa: F401  (registers "digits")
from fluxbench.benchmarks.base import DataSplit, ImageDataset, shared_samples
from fluxbench.benchmarks.registry import list_datasets, load_dataset, register_dataset

__all__ = ["DataSplit", "ImageDataset", "list_datasets", "load_dataset", "register_dataset", "shared_samples"]
