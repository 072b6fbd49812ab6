"""Turning the resolved config into the objects a protocol runs: data, stream, method context."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fluxbench.backbones import DatasetLoader, build_backbone
from fluxbench.backbones.source_models import build_source_model
from fluxbench.backbones.source_warmup import warm_up_source
from fluxbench.benchmarks import DataSplit, load_dataset
from fluxbench.benchmarks.attributes import AttributeSplit
from fluxbench.errors import ConfigError
from fluxbench.methods import MethodContext
from fluxbench.methods.training import check_compile
from fluxbench.protocols.rng import seed_everything  # noqa: F401  (re-exported for tests and scripts)
from fluxbench.streams.binary_pairs import attribute_task_stream, pairs_order
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream, class_order
from fluxbench.streams.experience import Experience
from fluxbench.streams.manifest import read_manifest


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for, but torch sees no CUDA device; use device=cpu")
    return torch.device(name)


def load_split(cfg: Mapping[str, Any], role: str) -> DataSplit:
    """The ``tuning`` or ``evaluation`` data of the configured benchmark."""
    return load_dataset(cfg["benchmark"][role], Path(cfg["data_root"]))


def scenario_of(cfg: Mapping[str, Any]) -> ClassIncrementalScenario:
    stream = cfg["stream"]
    pairs = cfg["benchmark"].get("class_pairs")
    if pairs:  # a binary task stream: one pair of classes per experience
        return ClassIncrementalScenario(2, 0, len(pairs))
    scenario = ClassIncrementalScenario.parse(stream["scenario"], stream.get("num_experiences"))
    if stream.get("classes_per_exp") is not None:
        scenario = ClassIncrementalScenario(int(stream["classes_per_exp"]), 0, scenario.num_experiences)
    if stream.get("initial_classes") is not None:
        first = int(stream["initial_classes"])
        scenario = ClassIncrementalScenario(scenario.increment, first, scenario.num_experiences)
    return scenario


def build_stream(cfg: Mapping[str, Any], split: DataSplit, seed: int, dataset_name: str = "") -> list[Experience]:
    """The class-incremental stream for one seed (or exactly the one in ``stream.manifest``)."""
    stream = cfg["stream"]
    transform = None
    if cfg["benchmark"].get("augment"):
        from fluxbench.streams.transforms import build_batch_transform

        transform = build_batch_transform(cfg["benchmark"]["augment"])
    if isinstance(split, AttributeSplit):  # CelebA: task i is attribute i of the same images
        sizes = scenario_of(cfg).experience_sizes(split.num_classes)
        return attribute_task_stream(split, sizes, dataset_name, transform)
    if stream.get("manifest"):
        manifest = read_manifest(stream["manifest"])
        sizes = [len(e["classes"]) for e in manifest["experiences"]]
        scenario = ClassIncrementalScenario(max(sizes[1:] or sizes), sizes[0], len(sizes))
        order = [int(c) for c in manifest["class_order"]]
    elif cfg["benchmark"].get("class_pairs"):
        scenario = scenario_of(cfg)
        order = pairs_order(cfg["benchmark"]["class_pairs"], split.num_classes, split.train.class_names,
                            split.class_aliases)
    else:
        scenario = scenario_of(cfg)
        order_seed = stream.get("class_order_seed")
        order = class_order(split.num_classes, seed if order_seed is None else int(order_seed))
    return class_incremental_stream(split, scenario, order, dataset_name, transform)


def method_context(cfg: Mapping[str, Any], num_classes: int) -> MethodContext:
    device = resolve_device(str(cfg.get("device", "auto")))
    backbone_cfg = dict(cfg["backbone"])
    load_data = dataset_loader(cfg)
    return MethodContext(
        build_backbone=lambda: build_backbone(backbone_cfg, load_data),
        num_classes=num_classes,
        device=device,
        amp=bool(cfg.get("amp", False)) and device.type == "cuda",
        compile=check_compile(str(cfg.get("compile", "none"))),
        build_source_model=_source_models(cfg, load_data, device),
        warm_up_source=_source_warmup(cfg, load_data, device),
    )


def dataset_loader(cfg: Mapping[str, Any]) -> DatasetLoader:
    """``spec -> DataSplit`` under ``data_root``: how backbones and source models get data without importing
    ``benchmarks/`` themselves."""
    return functools.partial(load_dataset, data_root=Path(cfg["data_root"]))


def _source_models(cfg: Mapping[str, Any], load_data: DatasetLoader, device: torch.device):
    """``(name="default") -> nn.Module`` over the benchmark's ``source_models`` (test-time methods), else None."""
    models = cfg["benchmark"].get("source_models")
    if not models:
        return None
    return functools.partial(build_source_model, dict(models), load_data=load_data, device=device)


def _source_warmup(cfg: Mapping[str, Any], load_data: DatasetLoader, device: torch.device):
    """``(name, model, params, recipe) -> record`` over the benchmark's ``source_models`` (their train_on data)."""
    models = cfg["benchmark"].get("source_models")
    if not models:
        return None
    return functools.partial(warm_up_source, dict(models), load_data=load_data, device=device)


def prepare_backbone(cfg: Mapping[str, Any]) -> None:
    """Build (and so cache) the configured backbone once: missing or corrupt weights fail here, in one line."""
    build_backbone(dict(cfg["backbone"]), dataset_loader(cfg))
