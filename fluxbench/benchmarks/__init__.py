"""Readers for real on-disk data formats; each registers itself by name (explicit imports, no discovery)."""

from fluxbench.benchmarks import (  # noqa: F401  (each module registers its readers)
    celeba,
    cifar,
    cifar_c,
    cub,
    digits,
    imagefolder,
    imagenet100,
    imagenet_c,
    mnist,
    mtil_folders,
    stanford_cars,
    tiny_imagenet,
)
from fluxbench.benchmarks.base import DataSplit, ImageDataset, shared_samples
from fluxbench.benchmarks.registry import (
    list_datasets,
    list_domain_sets,
    load_dataset,
    load_domain_set,
    register_dataset,
    register_domain_set,
)

__all__ = ["DataSplit", "ImageDataset", "list_datasets", "list_domain_sets", "load_dataset", "load_domain_set",
           "register_dataset", "register_domain_set", "shared_samples"]
