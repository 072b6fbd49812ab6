"""Typed schemas for the config groups whose keys fluxbench owns: the root (seed, device, stream...), tracking and
each protocol. Registered in Hydra's ConfigStore and named first in the YAML files' ``defaults:``, so that a
misspelled key or a value of the wrong type fails when Hydra composes the config, before anything runs.

Methods are typed by their own ``Hparams`` dataclass (checked by the registry); benchmarks and backbones are
readers' options, open by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class StreamSchema:
    scenario: str | None = None  # TTA benchmarks have none
    classes_per_exp: int | None = None
    initial_classes: int | None = None
    num_experiences: int | None = None
    class_order_seed: int | None = None
    manifest: str | None = None
    setting: str = "continual"


@dataclass
class ReproduceSchema:
    """A preset's published figure (conf/experiment/): ``published`` and ``tolerance`` in percent, as papers print
    them (the protocol's metrics are fractions); ``published: null`` with ``note`` saying why there is none."""

    name: str = MISSING
    metric: str = MISSING  # a metric the protocol aggregates over seeds (the parent logs ``<metric>_mean``)
    published: float | None = None
    tolerance: float | None = None  # |measured - published| within this many points counts as reproduced
    source: str = ""  # where the figure comes from (spec section, README, log)
    note: str = ""  # why published is null, or what the setting still lacks
    also: dict[str, float] = field(default_factory=dict)  # further published metrics of the same row


@dataclass
class RootSchema:
    protocol: Any = MISSING
    method: Any = MISSING
    benchmark: Any = MISSING
    backbone: Any = MISSING
    tracking: Any = MISSING
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: str = "none"
    data_root: str = "data"
    progress: bool = True
    stream: StreamSchema = field(default_factory=StreamSchema)
    reproduce: ReproduceSchema | None = None  # set by the presets in conf/experiment/ (fluxbench reproduce)


@dataclass
class TrackingSchema:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fluxbench"
    checkpoint_dir: str = ".fluxbench/checkpoints"
    artifact_location: str | None = None  # where a new experiment keeps its artifacts; None: MLflow's default


@dataclass
class ConventionalSchema:
    name: str = "conventional"
    num_seeds: int = 3


@dataclass
class RaySchema:
    """``protocol.launcher=ray``: where the Ray cluster is and what one trial (or phase-2 seed) task declares."""

    address: str = "auto"  # auto (the cluster this machine is part of) | local (start one here) | host:port
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    workers: int | None = None  # trials in flight at once; null: as many as the cluster's resources fit
    max_retries: int = 3  # a task whose worker died is run again (Ray's own retry), this many times at most
    heartbeat_s: int = 5  # Optuna heartbeat; a trial silent for 4 beats is failed and retried


@dataclass
class TwoPhaseSchema:
    name: str = "two_phase"
    n_trials: int = 4
    tuning_seeds: int = 3
    num_seeds: int = 5
    selection_metric: str = "last_accuracy"
    sampler: str = "random"
    sampler_seed: int = 0
    n_jobs: int = 1
    launcher: str = "local"  # local (protocol.n_jobs processes on this machine) | ray
    ray: RaySchema = field(default_factory=RaySchema)
    study_storage: str | None = None
    # test-time methods only (protocol=two_phase_tta sets them): the online loop's settings, as online_tta's
    batch_size: int | None = None
    online_eval: str | None = None
    speed_measure: str | None = None
    relative_speed: int | None = None


@dataclass
class OnlineTTASchema:
    name: str = "online_tta"
    num_seeds: int = 3
    batch_size: int = 64
    online_eval: str = "offline"
    speed_measure: str = "flops"
    relative_speed: int | None = None


@dataclass
class PreferenceSchema:
    name: str = "preference"
    num_seeds: int = 1
    prefs_per_task: int = 10
    preference_seed: int = 0
    sweep_points: int = 11


@dataclass
class MtilSchema:
    name: str = "mtil"
    num_seeds: int = 1
    shots: int = 16
    datasets: list[str] | None = None
    xtail_label_space: str = "all"
    eval_batch_size: int = 128
    test_limit: int | None = None


@dataclass
class MixtureSchema:
    pretraining: float = 0.33
    update: float = 0.34
    buffer: float = 0.33


@dataclass
class BudgetSchema:
    steps_per_task: int = 20  # full fine-tuning's steps per task: the budget is these steps' MAFs
    gmafs_per_task: float | None = None  # an explicit budget in GFLOPs x memory multiplier (wins over steps)


@dataclass
class CptSchedulerSchema:
    name: str = "cosine_with_linear_warmup"
    warmup: float = 0.1
    min_factor: float = 0.001
    cooldown: float = 0.1  # rsqrt: the fraction of a task's steps of its linear cooldown


@dataclass
class CptEvalSchema:
    fraction: float = 0.1
    min_samples: int = 300
    min_per_class: int = 2


@dataclass
class ContinualPretrainingSchema:
    name: str = "continual_pretraining"
    num_seeds: int = 1
    batch_size: int = 32
    data_mixture: MixtureSchema = field(default_factory=MixtureSchema)
    budget: BudgetSchema = field(default_factory=BudgetSchema)
    scheduler: CptSchedulerSchema = field(default_factory=CptSchedulerSchema)
    grad_clip: float = 1.0
    eval: CptEvalSchema = field(default_factory=CptEvalSchema)
    pretraining_pool: str | None = None  # a caption folder or webdataset shards; null: the benchmark's own pool
    pretraining_pool_limit: int | None = None  # the first N pairs of the pool; null: all


SCHEMAS = {
    (None, "root_schema"): RootSchema,
    ("tracking", "tracking_schema"): TrackingSchema,
    ("protocol", "conventional_schema"): ConventionalSchema,
    ("protocol", "two_phase_schema"): TwoPhaseSchema,
    ("protocol", "online_tta_schema"): OnlineTTASchema,
    ("protocol", "preference_schema"): PreferenceSchema,
    ("protocol", "mtil_schema"): MtilSchema,
    ("protocol", "continual_pretraining_schema"): ContinualPretrainingSchema,
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
