"""The two-phase protocol (GTEP) of "Hyperparameters in Continual Learning: a Reality Check".

Paper: Cha & Cho, arXiv 2403.09066 (TMLR 2025). Upstream code: github.com/csm9493/GTEP
(``main_search_*.py`` for phase 1, ``main_test_*.py`` for phase 2); spec in ``specs/two_phase_protocol.md``.

- Phase 1 searches ``method.search_space`` on the benchmark's *tuning* data: ``protocol.n_trials``
  trials, each over ``protocol.tuning_seeds`` seeds, scored by the mean of ``protocol.selection_metric``.
- Phase 2 trains once per seed (``protocol.num_seeds``) with the best trial's values, unchanged, on
  the *evaluation* data with the same stream config, and reports mean, std and a 95% CI.
- The conventional number (the best phase-1 mean) and its gap to phase 2 are recorded too.
- Test-time methods (``protocol=two_phase_tta``): phase 1 runs on the tuning corruptions, phase 2 on
  disjoint evaluation corruptions, the same online loop; selected by ``mean_error`` (lower is better).
  What is TTA-specific lives in :mod:`fluxbench.protocols.two_phase_tta`.

What differs from upstream: the search is an Optuna study (grid, random or TPE; see
:mod:`fluxbench.protocols.search`), resumable and shared by ``protocol.n_jobs`` processes;
H* is selected by the configured metric (upstream edited the best values in by hand); the
paper's budget is 30 configurations x 5 seeds, the embedded default a smaller one.

MLflow: a parent run per call; under it one run per trial (``fluxbench.kind=trial``,
``phase=tuning``) with one run per seed below it, and the phase-2 seed runs
(``phase=evaluation``). The parent holds ``selected.<hp>`` tags, phase-2 ``<metric>_mean/_std/_ci95``,
``conventional_<metric>``, ``overestimation_gap`` (how much the conventional number flatters: conventional
minus two-phase for accuracies, two-phase minus conventional for errors) and ``summary.json``. Resuming is by
config hash: the same command finds its parent and study; a seed run whose exact config already finished is read
back, not re-run.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fluxbench.benchmarks import DataSplit, shared_samples
from fluxbench.errors import ConfigError, DivergedError, FluxbenchError, LeakageError
from fluxbench.methods.registry import hyperparameters, validate_hyperparameters
from fluxbench.protocols import two_phase_tta as tta
from fluxbench.protocols.execution import SupervisedLoop, data_split_tags
from fluxbench.protocols.parent import ParentResult, ProtocolCall, run_protocol, seeds_of
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.progress import Progress
from fluxbench.protocols.ray_pool import RayPool, make_pool
from fluxbench.protocols.search import SearchStudy, plan, search_distributions, storage_url
from fluxbench.protocols.seeds import run_seed
from fluxbench.protocols.setup import load_split
from fluxbench.protocols.summary import HEADLINE, aggregate, flat_summary, format_table
from fluxbench.protocols.workers import WorkerPool
from fluxbench.tracking import RunHandle, SeedRecord, Tracker, config_hash
from fluxbench.tracking import layout as L

SELECTION_METRICS = ("last_accuracy", "avg_incremental_accuracy")
_NOT_IN_KEY = ("n_jobs", "study_storage", "launcher", "ray")  # how a call runs, not what it computes
Loop = SupervisedLoop | tta.TestTimeLoop
Pool = WorkerPool | RayPool


def lower_is_better(cfg: Mapping[str, Any]) -> bool:
    return cfg["protocol"]["selection_metric"] in tta.TTA_SELECTION_METRICS


def headline(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    return tta.TTA_HEADLINE if tta.is_tta(cfg) else HEADLINE


def seed_config(cfg: Mapping[str, Any], values: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The config of one seed run: the method with ``values`` merged in, nothing the seed does not depend on
    (a test-time seed: its phase's corruptions and the online loop's settings too)."""
    protocol: dict[str, Any] = {"name": "two_phase", "phase": phase}
    if tta.is_tta(cfg):
        cfg = tta.phase_config(cfg, phase)
        protocol |= {k: cfg["protocol"].get(k) for k in tta.TTA_PROTOCOL_KEYS}
    method = {k: v for k, v in cfg["method"].items() if k != "search_space"} | dict(values)
    out = {k: v for k, v in cfg.items() if k not in ("progress", "protocol", "method")}
    return out | {"method": method, "protocol": protocol}


def protocol_key(cfg: Mapping[str, Any], tuning_fingerprint: str, evaluation_fingerprint: str) -> str:
    """Names the parent run and the study: the same command finds and resumes both. Unset TTA-only settings are
    left out, so a supervised call keeps the key it had before they existed."""
    protocol = {k: v for k, v in cfg["protocol"].items()
                if k not in _NOT_IN_KEY and not (k in tta.TTA_PROTOCOL_KEYS and v is None)}
    kept = {k: v for k, v in cfg.items() if k != "progress"} | {"protocol": protocol}
    return config_hash(kept, tuning_fingerprint, evaluation_fingerprint)


def check_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the protocol settings and every value of the search space before anything runs."""
    protocol = cfg["protocol"]
    if tta.is_tta(cfg):
        tta.check_config(cfg)
    elif protocol["selection_metric"] not in SELECTION_METRICS:
        raise ConfigError(f"protocol.selection_metric={protocol['selection_metric']!r} is unknown; choose one of: "
                          f"{', '.join(SELECTION_METRICS)}")
    for key in ("tuning_seeds", "num_seeds", "n_jobs"):
        if int(protocol[key]) < 1:
            raise ConfigError(f"protocol.{key} must be at least 1; got {protocol[key]}")
    method = cfg["method"]
    dists = search_distributions(method.get("search_space"))
    for name, dist in dists.items():
        if name not in hyperparameters(method):
            raise ConfigError(f"method.search_space.{name} is not a hyperparameter of {method['name']!r}; "
                              f"its hyperparameters: {', '.join(hyperparameters(method))}")
        for value in getattr(dist, "choices", None) or (dist.low, dist.high):
            try:
                validate_hyperparameters({**method, name: value})
            except ConfigError as err:
                raise ConfigError(f"method.search_space.{name} allows {value!r}, which is invalid: {err}") from None
    return dists


def build_loop(cfg: Mapping[str, Any], phase: str) -> Loop:
    """The seed loop of ``phase``: supervised training on that pool, or the online TTA loop on that phase's domains."""
    if tta.is_tta(cfg):
        return tta.phase_loop(cfg, phase)
    return SupervisedLoop(cfg, load_split(cfg, phase), keep_diverged=phase == L.PHASE_EVALUATION)


def check_phases(cfg: Mapping[str, Any], tuning: Loop, evaluation: Loop) -> None:
    if isinstance(tuning, tta.TestTimeLoop) and isinstance(evaluation, tta.TestTimeLoop):
        tta.check_samples_disjoint(tuning, evaluation)
    else:
        check_disjoint(cfg, tuning.split, evaluation.split)


def check_disjoint(cfg: Mapping[str, Any], tuning: DataSplit, evaluation: DataSplit) -> None:
    """Refuse to start when the two phases share any sample (by content, not by name)."""
    shared = shared_samples(tuning, evaluation)
    if shared:
        spec_t, spec_e = (yaml.safe_dump(cfg["benchmark"][r], default_flow_style=True, width=1000).strip()
                          for r in ("tuning", "evaluation"))
        raise LeakageError(f"tuning data {spec_t} and evaluation data {spec_e} share {shared} samples "
                           f"(same pixels); two_phase needs disjoint data: fix benchmark.tuning/benchmark.evaluation")


def open_study(cfg: Mapping[str, Any], key: str, worker: int = 0) -> tuple[SearchStudy, list | None]:
    """The study of this call (created on first use) and the configurations it plans to run."""
    protocol = cfg["protocol"]
    dists = search_distributions(cfg["method"].get("search_space"))
    seed = int(protocol.get("sampler_seed", 0))
    budget, points = plan(dists, protocol["sampler"], int(protocol["n_trials"]), seed)
    url = storage_url(cfg["tracking"]["uri"], protocol.get("study_storage"))
    lock = (Path(url[len("sqlite:///"):] + ".lock") if url.startswith("sqlite:///")
            else Path(cfg["tracking"]["checkpoint_dir"]) / "two_phase.lock")
    beat = int(protocol["ray"]["heartbeat_s"]) if protocol.get("launcher") == "ray" else None  # workers elsewhere
    study = SearchStudy(url, f"fluxbench-two_phase-{cfg['method']['name']}-{key}", dists, protocol["sampler"], seed,
                        budget, lock, worker, direction="minimize" if lower_is_better(cfg) else "maximize",
                        heartbeat_s=beat)
    return study, points


# -- phase 1 ---------------------------------------------------------------------------------
def run_trial(cfg: Mapping[str, Any], study: SearchStudy, trial: Any, loop: Loop, tracker: Tracker,
              parent_id: str, progress: Callable[[int], None] | None = None) -> None:
    """All tuning seeds of one trial, as one MLflow run; a failure is recorded and the study goes on."""
    values = dict(trial.params)
    tcfg = seed_config(cfg, values, L.PHASE_TUNING)
    chash = config_hash(tcfg, "trial", trial.user_attrs["origin"], loop.fingerprint)
    tags = {L.PHASE_TAG: L.PHASE_TUNING, L.TRIAL_TAG: trial.number}
    run = tracker.start(f"trial {trial.number}", chash, L.KIND_TRIAL, parent_id, tags)
    metric = cfg["protocol"]["selection_metric"]
    try:
        if run.resumed:
            tracker.set_tags(run, tags)
        tracker.log_params(run, values)
        records = [run_seed(tcfg, s, loop, tracker, run, tags, progress) for s in seeds_of(cfg, "tuning_seeds")]
        score = aggregate(r.metrics for r in records)[metric]["mean"]
        if not math.isfinite(score):
            raise DivergedError(f"{metric} is {score} for every seed")
    except Exception as err:  # a diverging (or crashing) trial is a result: record it and go on
        reason = f"{type(err).__name__}: {err}"
        if not isinstance(err, FluxbenchError):  # not a user-facing error: keep the traceback for a bug report
            tracker.log_text(run, traceback.format_exc(), L.FAILURE_ARTIFACT)
        tracker.fail(run, err)
        study.fail(trial, reason, {"mlflow_run_id": run.run_id})
        print(f"trial {trial.number} {_fmt(values)}: failed: {reason}", flush=True)
        return
    except BaseException as err:  # interrupted: the run is KILLED and the trial runs again on resume
        tracker.fail(run, err)
        study.interrupt(trial)
        raise
    agg = aggregate(r.metrics for r in records)
    tracker.log_metrics(run, flat_summary(agg) | {"score": score})
    tracker.end(run)
    per_seed = [{k: r.metrics[k] for k in headline(cfg) if math.isfinite(r.metrics.get(k, math.nan))}
                for r in records]
    study.complete(trial, score, {"mlflow_run_id": run.run_id, "seed_metrics": per_seed})
    print(f"trial {trial.number} {_fmt(values)}: {metric} {100 * score:.2f}", flush=True)


def tune(cfg: Mapping[str, Any], key: str, parent_id: str, tracker: Tracker, loop: Loop,
         progress: Callable[[int], None] | None = None, worker: int = 0) -> None:
    """Claim and run trials until the budget is spent (one worker's loop)."""
    study, _ = open_study(cfg, key, worker)
    parent_pid = os.getppid()
    while os.getppid() == parent_pid and (trial := study.claim()) is not None:  # stop when orphaned
        with study.beating(trial):
            run_trial(cfg, study, trial, loop, tracker, parent_id, progress)


_WORKER: dict[str, Any] = {}


def _worker_inputs(cfg: Mapping[str, Any], role: str) -> tuple[Tracker, Loop]:
    """A worker process keeps its tracker and data between tasks of one call (a Ray worker outlives the call and
    may serve another one: the cache is keyed by the store and the config)."""
    tracking = cfg["tracking"]
    store = (tracking["uri"], tracking["experiment"], tracking.get("artifact_location"))
    if _WORKER.get("store") != store:
        _WORKER.update(store=store, tracker=Tracker(*store))
    key = config_hash(cfg, role)
    if _WORKER.get(f"{role}.key") != key:
        _WORKER.update({f"{role}.key": key, role: build_loop(cfg, role)})
    return _WORKER["tracker"], _WORKER[role]


def _tuning_worker(cfg: dict[str, Any], key: str, parent_id: str, worker: int) -> None:
    tracker, loop = _worker_inputs(cfg, L.PHASE_TUNING)
    tune(cfg, key, parent_id, tracker, loop, worker=worker)


def _evaluation_seed(cfg: dict[str, Any], parent_id: str, seed: int) -> SeedRecord | str:
    tracker, loop = _worker_inputs(cfg, L.PHASE_EVALUATION)
    return evaluate_seed(cfg, loop, seed, tracker, RunHandle(parent_id))


def run_phase1(cfg: Mapping[str, Any], key: str, parent: RunHandle, tracker: Tracker, loop: Loop,
               pool: Pool | None) -> SearchStudy:
    study, points = open_study(cfg, key)
    if study.budget < int(cfg["protocol"]["n_trials"]):
        print(f"protocol.n_trials={cfg['protocol']['n_trials']} capped at the {study.budget} distinct "
              "configurations of method.search_space", flush=True)
    interrupted = study.prepare(points)
    if interrupted:
        print(f"resuming the study: trials {interrupted} were interrupted and run again", flush=True)
    if pool is None:
        total = study.budget * int(cfg["protocol"]["tuning_seeds"]) * loop.num_experiences()
        with Progress(total, "phase 1 (tuning)", enabled=cfg.get("progress", True)) as bar:
            tune(cfg, key, parent.run_id, tracker, loop, bar.update)
    else:
        workers = min(pool.n_jobs, study.budget)  # more would find nothing to claim
        jobs = [pool.submit(_tuning_worker, dict(cfg), key, parent.run_id, w) for w in range(workers)]
        for job in jobs:
            job.result()
    study.wait_for_running()
    return study


# -- phase 2 ---------------------------------------------------------------------------------
def evaluate_seed(cfg: Mapping[str, Any], loop: Loop, seed: int, tracker: Tracker, parent: RunHandle,
                  progress: Callable[[int], None] | None = None) -> SeedRecord | str:
    """One phase-2 seed. A diverging loss is scored, not dropped (``SupervisedLoop.keep_diverged``); a seed that
    still fails comes back as its failure reason."""
    try:
        return run_seed(cfg, seed, loop, tracker, parent, {L.PHASE_TAG: L.PHASE_EVALUATION}, progress)
    except DivergedError as err:
        return f"seed {seed}: {err}"


def run_phase2(cfg: Mapping[str, Any], parent: RunHandle, tracker: Tracker, loop: Loop,
               pool: Pool | None) -> list[SeedRecord | str]:
    seeds = seeds_of(cfg)
    ecfg = seed_config(cfg, {}, L.PHASE_EVALUATION)
    if pool is not None:
        return pool.map(_evaluation_seed, [ecfg] * len(seeds), [parent.run_id] * len(seeds), seeds)
    with Progress(len(seeds) * loop.num_experiences(), "phase 2 (evaluation)",
                  enabled=cfg.get("progress", True)) as bar:
        return [evaluate_seed(ecfg, loop, s, tracker, parent, bar.update) for s in seeds]


# -- the call --------------------------------------------------------------------------------
def _fmt(values: Mapping[str, Any]) -> str:
    if not values:
        return "(defaults: nothing to tune)"
    return "(" + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) + ")"


def select(study: SearchStudy) -> Any:
    best = study.best()
    if best is None:
        failed = [t for t in study.trials() if "failure" in t.user_attrs]
        first = f"trial {failed[0].number}: {failed[0].user_attrs['failure']}" if failed else "none finished"
        raise FluxbenchError(f"all {len(failed)} phase-1 trials failed ({first}); narrow method.search_space")
    return best


def report(cfg: Mapping[str, Any], tracker: Tracker, parent: RunHandle, study: SearchStudy, best: Any,
           phase2: list[SeedRecord | str]) -> ParentResult:
    """The selection, phase-2 summary, conventional number and gap, for the parent run and the console."""
    metric = cfg["protocol"]["selection_metric"]
    results = [r for r in phase2 if isinstance(r, SeedRecord)]
    failed = [r for r in phase2 if isinstance(r, str)]
    if not results:
        raise DivergedError(f"every phase-2 seed diverged with the selected values {_fmt(best.params)}: {failed[0]}")
    agg = aggregate(r.metrics for r in results)
    diverged = sum(int(r.metrics.get("diverged", 0.0)) for r in results)  # kept in the figure, counted here
    conventional = aggregate(best.user_attrs["seed_metrics"])
    # how much the conventional number flatters the method: positive when tuning on the reported data helped
    gap = (agg[metric]["mean"] - best.value) if lower_is_better(cfg) else (best.value - agg[metric]["mean"])
    order = "two-phase minus conventional" if lower_is_better(cfg) else "conventional minus two-phase"
    tracker.set_tags(parent, {L.SELECTED_TAG.format(name=k): v for k, v in best.params.items()}
                     | {L.SELECTED_TAG.format(name="trial"): best.number})
    trials = [{"number": t.number, "state": t.state.name, "values": t.params, "score": t.value,
               **{k: t.user_attrs[k] for k in ("failure", "interrupted", "mlflow_run_id") if k in t.user_attrs}}
              for t in study.trials()]
    summary = {"selection_metric": metric, "selected": best.params, "selected_trial": best.number,
               "conventional": {metric: best.value, "summary": conventional}, "two_phase": agg,
               "overestimation_gap": gap, "phase2_seeds": [r.seed for r in results], "phase2_failed": failed,
               "phase2_diverged": diverged,
               "trials": trials}
    table = "\n".join([
        format_table({"two-phase": agg, "conventional (phase-1 best)": conventional}, headline(cfg)),
        f"selected (trial {best.number}): {_fmt(best.params)}",
        f"overestimation gap ({metric}): {100 * gap:+.2f} points ({order})",
        f"phase-2 seeds diverged: {diverged} of {len(results)} (kept in the figure, scored as their model stood)"])
    for reason in failed:
        print(f"warning: phase-2 {reason}", file=sys.stderr)
    metrics = flat_summary(agg) | {f"conventional_{metric}": best.value, "overestimation_gap": gap,
                                   "phase2_diverged_seeds": float(diverged), "phase2_seeds": float(len(results))}
    return ParentResult(metrics, summary, table, {"summary": summary, "selected": dict(best.params)})


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    check_config(cfg)
    preflight(cfg, kind="tta" if tta.is_tta(cfg) else "supervised")
    tuning, evaluation = build_loop(cfg, L.PHASE_TUNING), build_loop(cfg, L.PHASE_EVALUATION)
    check_phases(cfg, tuning, evaluation)
    key = protocol_key(cfg, tuning.fingerprint, evaluation.fingerprint)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    call = ProtocolCall("two_phase", label, key, {
        L.FINGERPRINT_TAG.format(role=L.PHASE_TUNING): tuning.fingerprint,
        L.FINGERPRINT_TAG.format(role=L.PHASE_EVALUATION): evaluation.fingerprint,
        **data_split_tags(getattr(tuning, "split", None), L.PHASE_TUNING),
        **data_split_tags(getattr(evaluation, "split", None), L.PHASE_EVALUATION),
    }, rank_metric=cfg["protocol"]["selection_metric"], rank_order="min" if lower_is_better(cfg) else "max")

    def body(parent: RunHandle) -> ParentResult:
        pool = make_pool(cfg["protocol"])
        try:
            study = run_phase1(cfg, key, parent, tracker, tuning, pool)
            best = select(study)
            selected = {**cfg, "method": {**cfg["method"], **best.params}}
            return report(cfg, tracker, parent, study, best, run_phase2(selected, parent, tracker, evaluation, pool))
        except BaseException as err:
            if pool is not None:
                pool.close(interrupted=isinstance(err, KeyboardInterrupt))
                pool = None
            raise
        finally:
            if pool is not None:
                pool.close()

    return run_protocol(cfg, tracker, call, body)
