"""The MLflow run layout: every tag, artifact and run-kind name fluxbench writes or reads.

Protocols write runs through :class:`~fluxbench.tracking.mlflow_store.Tracker`; reports read
them back through :mod:`fluxbench.tracking.reading`. Both use these names, and no string
literal of their own, so the layout is stated once.

One protocol call is a *parent* run (``KIND_PROTOCOL``). Under it, per seed, a ``KIND_SEED``
run (two_phase: its tuning seeds sit under ``KIND_TRIAL`` runs). A parent names the metric
that ranks it (``RANK_TAG``) and, for lower-is-better metrics, says so (``RANK_ORDER_TAG``).
"""

from __future__ import annotations

# -- tags ---------------------------------------------------------------------------------
HASH_TAG = "fluxbench.config_hash"  # what the run computes: a finished hash is skipped, an unfinished one resumed
KIND_TAG = "fluxbench.kind"  # protocol | trial | seed
FAILURE_TAG = "fluxbench.failure"  # "<ExceptionType>: <message>" of a failed or killed run
SIZES_TAG = "fluxbench.sizes"  # JSON list: test samples per experience (weights of the accuracy matrix)
RANK_TAG = "fluxbench.rank_metric"  # the metric (a seed-run metric name) the parent is ranked by
RANK_ORDER_TAG = "fluxbench.rank_order"  # "max" (higher is better) or "min"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
PROTOCOL_TAG = "protocol"
METHOD_TAG = "method"
BENCHMARK_TAG = "benchmark"
SETTING_TAG = "setting"  # online_tta: continual | gradual | mixed | reset_each_shift
PHASE_TAG = "phase"  # tuning | evaluation
SEED_TAG = "seed"
TRIAL_TAG = "trial"
GIT_TAG = "git_commit"
FINGERPRINT_TAG = "data_fingerprint.{role}"  # .format(role="tuning" | "evaluation")
DATA_SPLIT_TAG = "data_split"  # pilot_released | seeded_80_20 | official; a parent run's: data_split.<role>
SELECTED_TAG = "selected.{name}"  # two_phase: a selected hyperparameter value
PRESET_TAG = "fluxbench.preset"  # the conf/experiment/ preset a parent run reproduces (fluxbench reproduce)
DEVIATION_TAG = "fluxbench.deviation"  # a run that departs from its spec says how (continual pretraining: no pool)
PRETRAINING_POOL_TAG = "fluxbench.pretraining_pool"  # continual pretraining: the pool's source (none, digits, path)
PRETRAINING_POOL_SIZE_TAG = "fluxbench.pretraining_pool.size"  # image-text pairs read from a user's pool
REPRODUCE_TAG = "fluxbench.reproduce"  # JSON: the preset's metric, published figure (%), tolerance, source

# -- values --------------------------------------------------------------------------------
KIND_PROTOCOL, KIND_TRIAL, KIND_SEED = "protocol", "trial", "seed"
PHASE_TUNING, PHASE_EVALUATION = "tuning", "evaluation"
PROTOCOL_PREFERENCE = "preference"  # the protocol tag of IBCL's preference evaluation (reports give it a section)
PROTOCOL_MTIL = "mtil"  # the protocol tag of the MTIL / X-TAIL CLIP stream (reports give it a section)
PROTOCOL_CONTINUAL_PRETRAINING = "continual_pretraining"  # FoMo-in-Flux (reports give it its own table, paths)

# -- artifacts -----------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"  # the resolved config
SUMMARY_ARTIFACT = "summary.json"  # the parent's aggregate over seeds (and, two_phase, the selection)
MATRIX_ARTIFACT = "accuracy_matrix.csv"  # R[i, j] of a class-incremental seed run
MANIFEST_ARTIFACT = "stream_manifest.json"  # the exact stream of a seed run
PREFERENCES_ARTIFACT = "preferences.json"  # protocol=preference: the preferences asked after each task (parent run)
PREFERENCE_ACCURACIES_ARTIFACT = "preference_accuracies.json"  # every sampled model's per-task accuracy (seed run)
DATASET_TASK_ARTIFACT = "dataset_task_accuracy.csv"  # continual pretraining: score per dataset after each task
FAILURE_ARTIFACT = "failure.txt"  # the traceback of a run that failed on a bug (not a user error)

# -- metrics -------------------------------------------------------------------------------
# per-experience curves logged with ``step`` (not results of the run): accuracy, error, acc_exp<j>, step.<name>
STEP_METRIC_PATTERN = r"^(accuracy|error|acc_exp\d+|step\..+)$"
