"""The MLflow store the report tests read: real short runs, one real failure, and hand-built layouts.

Real runs on the embedded digits (small CNN, 2 seeds): ``conventional.run`` for finetune and
prototype, a prototype run whose second seed crashes (its parent ends FAILED), and a tiny
``two_phase.run`` for both methods. Built by hand through ``Tracker``: a parent left RUNNING
(with tempting numbers); the online-TTA layout (``mean_error``, ``error.<domain>``; its methods
are not in the tree yet); and, in the experiment ``two-phase-by-hand``, a two-phase layout whose
numbers are chosen so that the ranking changes (trials with tuning seeds, phase-2 seeds under
the parent, ``conventional_last_accuracy`` on the parent). The store is built once per session
and shared by ``test_report.py`` and ``test_report_browser.py``; an untouched copy of the freshly
created, empty database is kept beside it.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from conftest import compose_config

from fluxbench.cli import main
from fluxbench.protocols import conventional, execution, two_phase
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.tracking import Tracker

EXPERIMENT = "fluxbench"
BY_HAND = "two-phase-by-hand"
SIZES = [10, 10, 10]
# method: (conventional score logged on the parent, phase-2 last accuracy of seed 0; seed 1 adds 0.02)
TWO_PHASE = {"finetune": (0.90, 0.57), "replay": (0.85, 0.49), "prototype": (0.80, 0.70)}
TTA_ERRORS = {"source": {"gaussian_noise-5": (0.70, 0.72), "fog-5": (0.40, 0.44), "jpeg_compression-5": (0.50, 0.50)},
              "tent": {"gaussian_noise-5": (0.55, 0.53), "fog-5": (0.35, 0.33), "jpeg_compression-5": (0.45, 0.47)}}

# continual pretraining (the layout protocol=continual_pretraining writes): method -> per seed, the (A_KA, A_ZS)
# after each of 2 tasks (the zero-shot point is shared), and the budget's steps per task
CPT_ZERO_SHOT = (0.30, 0.60)
CPT_PATHS = {"cpt_finetune": ([(0.50, 0.50), (0.70, 0.40)], [(0.52, 0.48), (0.72, 0.38)], 20),
             "ema_merge": ([(0.45, 0.58), (0.60, 0.55)], [(0.47, 0.56), (0.62, 0.53)], 20),
             "cpt_lora": ([(0.35, 0.60), (0.40, 0.59)], [(0.37, 0.60), (0.42, 0.57)], 27)}
CPT_GFLOPS = {"cpt_finetune": 2.0, "ema_merge": 2.0, "cpt_lora": 1.6}


@dataclass
class Store:
    root: Path
    uri: str
    empty_uri: str
    finished: dict[str, str]  # method -> parent run id of the real finished conventional runs
    two_phase: dict[str, str]  # method -> parent run id of the real two-phase runs
    failed_id: str
    running_id: str


def common_overrides(root: Path, tracker: Tracker) -> tuple[str, ...]:
    return (f"tracking.uri={tracker.uri}", f"tracking.checkpoint_dir={root / 'checkpoints'}",
            f"tracking.experiment={EXPERIMENT}", "backbone=small_cnn", "backbone.width=8", "protocol.num_seeds=2")


def real_two_phase_runs(root: Path, tracker: Tracker) -> dict[str, str]:
    """Phase 1: finetune tries 2 learning rates, prototype has nothing to tune; 1 tuning seed, 2 phase-2 seeds."""
    common = (*common_overrides(root, tracker), "protocol=two_phase", "protocol.n_trials=2", "protocol.tuning_seeds=1")
    finetune = compose_config("method=finetune", "method.epochs=1", "~method.search_space.epochs",
                              "~method.search_space.batch_size", *common)
    return {"finetune": two_phase.run(finetune, tracker)["run_id"],
            "prototype": two_phase.run(compose_config("method=prototype", *common), tracker)["run_id"]}


def real_runs(root: Path, tracker: Tracker) -> tuple[dict[str, str], str]:
    common = common_overrides(root, tracker)
    finished = {
        "finetune": conventional.run(compose_config("method=finetune", "method.epochs=1", *common), tracker),
        "prototype": conventional.run(compose_config("method=prototype", *common), tracker),
    }
    original, calls = execution.accuracy, {"n": 0}

    def crash_in_second_seed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 15:  # 5 experiences evaluate 1+2+3+4+5 = 15 times per seed
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    with mock.patch.object(execution, "accuracy", crash_in_second_seed):
        try:
            conventional.run(compose_config("method=prototype", "seed=7", *common), tracker)
        except RuntimeError:
            pass
    failed = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'FAILED' and "
                                        "tags.`fluxbench.kind` = 'protocol'")
    return {m: out["run_id"] for m, out in finished.items()}, failed[0].info.run_id


def seed_run(tracker: Tracker, parent_id: str, key: str, seed: int, phase: str, R: np.ndarray | None = None,
             metrics: dict[str, float] | None = None) -> None:
    run = tracker.start(f"seed {seed}", key, "seed", parent_id, {"seed": seed, "phase": phase})
    if R is not None:
        tracker.log_matrix(run, R)
        tracker.set_tags(run, {"fluxbench.sizes": SIZES})
        # a decoy: a logged number that disagrees with the matrix, which the report must not use
        metrics = {**summarize_matrix(R, SIZES), "last_accuracy": 0.0, **(metrics or {})}
    tracker.log_metrics(run, {k: v for k, v in (metrics or {}).items() if not np.isnan(v)})
    tracker.end(run)


def matrix(last: float) -> np.ndarray:
    return np.array([[0.95, np.nan, np.nan], [0.90, 0.92, np.nan], [last - 0.05, last, last + 0.05]])


def protocol_run(tracker: Tracker, key: str, protocol: str, method: str, benchmark: str, **tags: str):
    """A parent run as the protocols write it: ranked by last accuracy, or by mean error for test-time runs."""
    rank = ("mean_error", "min") if protocol == "online_tta" else ("last_accuracy", "max")
    return tracker.start(f"{protocol}: {method} on {benchmark}", key, "protocol",
                         tags={"protocol": protocol, "method": method, "benchmark": benchmark,
                               "fluxbench.rank_metric": rank[0], "fluxbench.rank_order": rank[1], **tags})


def two_phase_by_hand(tracker: Tracker) -> None:
    for method, (conv, last) in TWO_PHASE.items():
        parent = protocol_run(tracker, f"tp-{method}", "two_phase", method, "digits", **{"selected.lr": "0.01"})
        trial = tracker.start("trial 0", f"tp-{method}-t0", "trial", parent.run_id, {"phase": "tuning", "trial": 0})
        seed_run(tracker, trial.run_id, f"tp-{method}-t0-s0", 0, "tuning", matrix(conv), {"wall_time_s": 1.0})
        tracker.end(trial)
        for seed in (0, 1):
            seed_run(tracker, parent.run_id, f"tp-{method}-s{seed}", seed, "evaluation", matrix(last + 0.02 * seed),
                     {"wall_time_s": 2.0 + seed, "peak_memory_mb": 100.0})
        tracker.log_metrics(parent, {"conventional_last_accuracy": conv, "overestimation_gap": conv - last - 0.01,
                                     "last_accuracy_mean": 0.0,
                                     "phase2_diverged_seeds": 1.0 if method == "replay" else 0.0})
        tracker.end(parent)


def tta_runs(tracker: Tracker) -> None:
    for method, errors in TTA_ERRORS.items():
        parent = protocol_run(tracker, f"tta-{method}", "online_tta", method, "digits-c")
        for seed in (0, 1):
            per_domain = {f"error.{d}": e[seed] for d, e in errors.items()}
            seed_run(tracker, parent.run_id, f"tta-{method}-s{seed}", seed, "evaluation", None,
                     {**per_domain, "mean_error": float(np.mean(list(per_domain.values()))), "wall_time_s": 1.5,
                      "flops": 2e9 + 1e7 * seed})
        tracker.end(parent)


def cpt_table(path: list[tuple[float, float]]) -> str:
    """A seed's dataset-by-task table as the protocol writes it (row 0: the zero-shot point)."""
    rows = ["task,d0:adapt,d1:eval,A_KA,A_ZS,gmean"]
    for t, (ka, zs) in enumerate([CPT_ZERO_SHOT, *path]):
        rows.append(f"{t},{ka:.6f},{zs:.6f},{ka:.6f},{zs:.6f},{np.sqrt(ka * zs):.6f}")
    return "\n".join(rows) + "\n"


def cpt_runs(tracker: Tracker) -> None:
    for method, (*seeds, steps) in CPT_PATHS.items():
        parent = tracker.start(f"continual_pretraining: {method}", f"cpt-{method}", "protocol",
                               tags={"protocol": "continual_pretraining", "method": method, "benchmark": "fomo_digits",
                                     "fluxbench.rank_metric": "gmean", "fluxbench.rank_order": "max"})
        for seed, path in enumerate(seeds):
            run = tracker.start(f"seed {seed}", f"cpt-{method}-s{seed}", "seed", parent.run_id,
                                {"seed": seed, "phase": "evaluation"})
            ka, zs = path[-1]
            tracker.log_metrics(run, {"A_KA": ka, "A_ZS": zs, "gmean": float(np.sqrt(ka * zs)),
                                      "A_KA_zero_shot": CPT_ZERO_SHOT[0], "A_ZS_zero_shot": CPT_ZERO_SHOT[1],
                                      "budget.steps_per_task": steps, "budget.gflops_per_step": CPT_GFLOPS[method],
                                      "budget.memory_multiplier": 1.0 if steps == 20 else 0.93})
            for t, (k, z) in enumerate([CPT_ZERO_SHOT, *path]):
                tracker.log_metrics(run, {"step.A_KA": k, "step.A_ZS": z}, step=t)
            tracker.log_text(run, cpt_table(path), "dataset_task_accuracy.csv")
            tracker.end(run)
        tracker.end(parent)


def running_run(tracker: Tracker) -> str:
    parent = protocol_run(tracker, "still-running", "conventional", "joint", "digits")
    seed_run(tracker, parent.run_id, "still-running-s0", 0, "evaluation", np.eye(3) * 0 + 1.0)
    return parent.run_id


def build_store(root: Path) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    shutil.copy(root / "mlflow.db", root / "empty.db")  # migrated schema, one experiment, no runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only spin on a busy 2-core machine
    try:
        finished, failed_id = real_runs(root, tracker)
        real_two_phase = real_two_phase_runs(root, tracker)
    finally:
        torch.set_num_threads(threads)
    tta_runs(tracker)
    cpt_runs(tracker)
    running_id = running_run(tracker)
    two_phase_by_hand(Tracker(uri, BY_HAND))
    return Store(root, uri, f"sqlite:///{root / 'empty.db'}", finished, real_two_phase, failed_id, running_id)


_CACHE: dict[Path, object] = {}


def report_store(tmp_path_factory) -> Store:
    """The shared store, built on first use in this session."""
    root = tmp_path_factory.getbasetemp() / "report-store"
    if root not in _CACHE:
        _CACHE[root] = build_store(root)
    return _CACHE[root]


def cli_report(tmp_path_factory) -> tuple[Path, str]:
    """``fluxbench report`` on the shared store, run once: its output folder and what it printed."""
    out = tmp_path_factory.getbasetemp() / "report-cli"
    if out not in _CACHE:
        store = report_store(tmp_path_factory)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            main(["report", "--tracking-uri", store.uri, "--out", str(out)])
        _CACHE[out] = (out, printed.getvalue())
    return _CACHE[out]
