"""The two-phase protocol, read back from MLflow and Optuna: selection, leakage, resume after a kill,
diverging trials, parallel workers, and the search-space plumbing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import compose_config

from fluxbench.benchmarks import DataSplit, ImageDataset
from fluxbench.errors import ConfigError, LeakageError
from fluxbench.protocols import two_phase
from fluxbench.protocols.search import SearchStudy, plan, search_distributions, storage_url
from fluxbench.tracking import Tracker
from fluxbench.tracking.mlflow_store import KIND_TAG

# finetune with one epoch and only lr to search: seconds per seed on the digits pools
SMALL = ("protocol=two_phase", "method.epochs=1", "~method.search_space.epochs", "~method.search_space.batch_size")
IS_TRIAL = f"tags.`{KIND_TAG}` = 'trial'"


def store_overrides(root: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.checkpoint_dir={root / 'checkpoints'}",
            "tracking.experiment=tests"]


def tracker_of(cfg: dict) -> Tracker:
    return Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])


def study_of(root: Path) -> optuna.Study:
    url = f"sqlite:///{root / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def trial_runs(tracker: Tracker, parent_id: str) -> list:
    return tracker.children(parent_id, IS_TRIAL)


def artifact_json(tracker: Tracker, run_id: str, path: str) -> dict:
    return json.loads(tracker.read_text(run_id, path))


@pytest.fixture(scope="module")
def three_methods(tmp_path_factory):
    """finetune, ewc and prototype through two_phase on digits, all in one MLflow store."""
    root = tmp_path_factory.mktemp("two_phase")
    calls = {
        "finetune": (*SMALL, "method=finetune", "protocol.n_trials=3", "protocol.tuning_seeds=2"),
        "ewc": ("protocol=two_phase", "method=ewc", "method.epochs=1", "~method.search_space.lr",
                "method.search_space.ewc_lambda={low:1.0,high:100.0,log:true}", "protocol.n_trials=2",
                "protocol.tuning_seeds=1"),
        "prototype": ("protocol=two_phase", "method=prototype", "protocol.tuning_seeds=1"),
    }
    out = {}
    for name, overrides in calls.items():
        cfg = compose_config(*overrides, "protocol.num_seeds=2", *store_overrides(root))
        out[name] = (cfg, two_phase.run(cfg, tracker_of(cfg)))
    return root, out


def test_selected_values_are_the_best_trials_and_phase2_uses_them(three_methods):
    root, out = three_methods
    cfg, result = out["finetune"]
    tracker = tracker_of(cfg)
    parent = tracker.client.get_run(result["run_id"])
    trials = trial_runs(tracker, result["run_id"])
    assert len(trials) == 3 and all(t.info.status == "FINISHED" for t in trials)
    assert len({t.data.params["lr"] for t in trials}) == 3  # three distinct configurations
    best = max(trials, key=lambda t: (t.data.metrics["score"], -int(t.data.tags["trial"])))
    assert parent.data.tags["selected.lr"] == best.data.params["lr"]
    assert parent.data.tags["selected.trial"] == best.data.tags["trial"]
    assert parent.data.metrics["conventional_last_accuracy"] == pytest.approx(best.data.metrics["score"])
    # the trial's score is the mean of its own seed runs, on the tuning data
    seeds = tracker.children(best.info.run_id)
    assert sorted(s.data.params["seed"] for s in seeds) == ["0", "1"]
    assert best.data.metrics["score"] == pytest.approx(np.mean([s.data.metrics["last_accuracy"] for s in seeds]))
    # phase 2: one run per seed directly under the parent, with exactly the selected values, on the evaluation data
    phase2 = tracker.children(result["run_id"], "tags.phase = 'evaluation'")
    assert sorted(s.data.params["seed"] for s in phase2) == ["0", "1"]
    assert {float(s.data.params["method.lr"]) for s in phase2} == {float(best.data.params["lr"])}
    assert {s.data.params["method.epochs"] for s in phase2} == {"1"}
    mean = np.mean([s.data.metrics["last_accuracy"] for s in phase2])
    assert parent.data.metrics["last_accuracy_mean"] == pytest.approx(mean)
    assert parent.data.metrics["overestimation_gap"] == pytest.approx(best.data.metrics["score"] - mean)
    # isolation by content: phase-1 streams come from the tuning pool, phase-2 streams from the evaluation pool
    tags = parent.data.tags
    assert tags["data_fingerprint.tuning"] != tags["data_fingerprint.evaluation"]
    for run, role in ((seeds[0], "tuning"), (phase2[0], "evaluation")):
        manifest = artifact_json(tracker, run.info.run_id, "stream_manifest.json")
        assert manifest["fingerprint"] == tags[f"data_fingerprint.{role}"]
    summary = artifact_json(tracker, result["run_id"], "summary.json")
    assert summary["selected"] == {"lr": float(best.data.params["lr"])}
    assert summary["selected_trial"] == int(best.data.tags["trial"])
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3


def test_finetune_ewc_prototype_complete_with_phase2_means_on_their_parents(three_methods):
    root, out = three_methods
    for name, (cfg, result) in out.items():
        tracker = tracker_of(cfg)
        parent = tracker.client.get_run(result["run_id"])
        assert parent.info.status == "FINISHED"
        assert parent.data.tags[KIND_TAG] == "protocol" and parent.data.tags["protocol"] == "two_phase"
        assert parent.data.tags["method"] == name
        phase2 = tracker.children(result["run_id"], "tags.phase = 'evaluation'")
        assert len(phase2) == 2
        for metric in ("last_accuracy", "avg_incremental_accuracy"):
            values = [s.data.metrics[metric] for s in phase2]
            assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(np.mean(values))
            assert parent.data.metrics[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
            assert f"{metric}_ci95" in parent.data.metrics
    # prototype has nothing to tune: exactly one trial, with the defaults
    cfg, result = out["prototype"]
    (trial,) = trial_runs(tracker_of(cfg), result["run_id"])
    assert trial.data.params == {} and result["selected"] == {}
    # ewc searched ewc_lambda (continuous, log scale) within its bounds
    cfg, result = out["ewc"]
    lambdas = [float(t.data.params["ewc_lambda"]) for t in trial_runs(tracker_of(cfg), result["run_id"])]
    assert len(lambdas) == 2 and all(1.0 <= v <= 100.0 for v in lambdas)


def test_the_same_call_again_is_skipped(three_methods, capsys):
    _, out = three_methods
    cfg, result = out["prototype"]
    again = two_phase.run(cfg, tracker_of(cfg))
    assert again == {"skipped": True, "run_id": result["run_id"]}
    assert "skipped: two_phase for prototype on digits" in capsys.readouterr().out


def test_overlapping_data_is_refused_before_anything_runs(make_config):
    cfg = make_config(*SMALL, "benchmark.evaluation.pool=tuning")
    tracker = tracker_of(cfg)
    with pytest.raises(LeakageError) as err:
        two_phase.run(cfg, tracker)
    message = str(err.value)
    assert "\n" not in message
    assert "tuning data {dataset: digits, pool: tuning} and evaluation data {dataset: digits, pool: tuning}" in message
    assert "share 539 samples" in message  # the whole pool: 402 train + 137 test images
    assert tracker.client.search_runs([tracker.experiment_id]) == []


def _split(images: np.ndarray, name: str) -> DataSplit:
    n = len(images)
    ds = ImageDataset(images, np.arange(n) % 2, np.array([f"{name}:{i}" for i in range(n)]), name)
    return DataSplit(ds, ds.subset([0]), 2)


def test_overlap_is_found_by_content_not_by_name():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    cfg = {"benchmark": {"tuning": {"dataset": "a"}, "evaluation": {"dataset": "b"}}}
    two_phase.check_disjoint(cfg, _split(a, "a"), _split(b, "b"))  # disjoint: no error
    b[3] = a[5]  # one shared image under another name, id and label
    with pytest.raises(LeakageError, match=r"tuning data \{dataset: a\} and evaluation data \{dataset: b\} share 1 "):
        two_phase.check_disjoint(cfg, _split(a, "a"), _split(b, "b"))


def test_a_diverging_trial_is_recorded_as_failed_and_the_protocol_completes(make_config):
    cfg = make_config(*SMALL, "method=finetune", "method.search_space.lr={choices:[10.0,0.01]}",
                      "protocol.sampler=grid", "protocol.n_trials=5", "protocol.tuning_seeds=1",
                      "protocol.num_seeds=1")
    tracker = tracker_of(cfg)
    result = two_phase.run(cfg, tracker)
    runs = {float(t.data.params["lr"]): t for t in trial_runs(tracker, result["run_id"])}
    assert set(runs) == {10.0, 0.01}  # the grid has two points: the budget of 5 is capped at 2
    failed = runs[10.0]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["fluxbench.failure"].startswith("DivergedError: the training loss became nan")
    assert "score" not in failed.data.metrics
    (seed_run,) = tracker.children(failed.info.run_id)
    assert seed_run.info.status == "FAILED" and "DivergedError" in seed_run.data.tags["fluxbench.failure"]
    assert runs[0.01].info.status == "FINISHED"
    assert tracker.client.get_run(result["run_id"]).info.status == "FINISHED"
    assert result["selected"] == {"lr": 0.01}
    states = {t.params["lr"]: (t.state.name, t.user_attrs.get("failure", "")) for t in study_of(
        Path(cfg["tracking"]["uri"][len("sqlite:///"):]).parent).trials}
    assert states[0.01][0] == "COMPLETE"
    assert states[10.0][0] == "FAIL" and "loss became nan" in states[10.0][1]


def test_parallel_workers_run_each_trial_once(make_config):
    cfg = make_config(*SMALL, "method=finetune", "protocol.n_jobs=2", "protocol.n_trials=4", "protocol.tuning_seeds=1",
                      "protocol.num_seeds=2")
    tracker = tracker_of(cfg)
    result = two_phase.run(cfg, tracker)
    trials = trial_runs(tracker, result["run_id"])
    assert len(trials) == 4 and len({t.data.params["lr"] for t in trials}) == 4
    assert all(len(tracker.children(t.info.run_id)) == 1 for t in trials)
    assert len(tracker.children(result["run_id"], "tags.phase = 'evaluation'")) == 2
    study = study_of(Path(cfg["tracking"]["uri"][len("sqlite:///"):]).parent)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["process"] for t in study.trials}) == 2  # both worker processes took trials
    seeds = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'seed'")
    assert len(seeds) == 4 + 2


def _claimed_states(root: Path) -> list[str]:
    """States of the trials a process has claimed, read with sqlite3 only (never creating the database)."""
    path = root / "optuna.db"
    if not path.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return [s for (s,) in db.execute("SELECT t.state FROM trials t JOIN trial_user_attributes a "
                                             "ON a.trial_id = t.trial_id AND a.key = 'process'")]
    except sqlite3.Error:  # the child is still creating its tables
        return []


def _in_second_trial(root: Path) -> bool:
    states = _claimed_states(root)
    return "COMPLETE" in states and "RUNNING" in states


def test_killed_during_phase1_the_same_command_finishes_without_rerunning_trials(tmp_path):
    args = [sys.executable, "-m", "fluxbench.cli", "run", *SMALL, "method=finetune", "protocol.n_trials=3",
            "protocol.tuning_seeds=2", "protocol.num_seeds=1", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not _in_second_trial(tmp_path) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t.user_attrs["mlflow_run_id"] for t in study_of(tmp_path).trials if t.state.name == "COMPLETE"}
    assert 1 <= len(before) < 3, first.stdout.read()
    running = [t.number for t in study_of(tmp_path).trials if t.state.name == "RUNNING"]
    assert len(running) == 1  # killed inside a trial
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "fluxbench")
    started = {r.info.run_id: r.info.start_time for r in tracker.client.search_runs([tracker.experiment_id])}

    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    trials = study_of(tmp_path).trials
    complete = {t.number: t for t in trials if t.state.name == "COMPLETE"}
    assert len(complete) == 3
    assert {n: complete[n].user_attrs["mlflow_run_id"] for n in before} == before  # finished trials kept
    for number in running:  # the trial the kill interrupted is marked so, and ran again under a new number
        assert trials[number].state.name == "FAIL" and "interrupted" in trials[number].user_attrs
        assert any(t.user_attrs.get("origin") == number for t in complete.values())
        assert "resuming the study" in second.stdout
    # no finished run was re-run: one parent, three trial runs, two seed runs each, old runs untouched
    parents = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'protocol'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = trial_runs(tracker, parents[0].info.run_id)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # the interrupted one was resumed
    for run in runs:
        assert len(tracker.children(run.info.run_id)) == 2
    for run_id in before.values():
        for seed_run in tracker.children(run_id):
            assert seed_run.info.start_time == started[seed_run.info.run_id]


# -- the search-space plumbing ---------------------------------------------------------------
def test_search_space_entries_become_distributions_and_bad_ones_are_config_errors():
    dists = search_distributions({"lr": {"choices": [0.1, 0.01]}, "n": {"low": 1, "high": 9, "step": 2},
                                  "lam": {"low": 1.0, "high": 1e5, "log": True}})
    assert list(dists) == ["lam", "lr", "n"]
    assert dists["lr"].choices == (0.1, 0.01) and dists["n"].step == 2 and dists["lam"].log
    for bad, match in [({"lr": 0.1}, "method.search_space.lr must be"), ({"lr": {"choices": []}}, "is empty"),
                       ({"lr": {"low": 1.0}}, "needs low and high"),
                       ({"lr": {"low": 1.0, "high": 0.5}}, "method.search_space.lr: ")]:
        with pytest.raises(ConfigError, match=match):
            search_distributions(bad)


def test_plans_grid_capped_random_deterministic_empty_space_one_trial():
    dists = search_distributions({"lr": {"choices": [0.1, 0.01, 0.001]}, "e": {"choices": [1, 2]}})
    budget, points = plan(dists, "grid", 30, seed=0)
    assert budget == 6 and len(points) == 6 and len({tuple(p.items()) for p in points}) == 6
    assert plan(dists, "grid", 30, seed=0)[1] == points and plan(dists, "grid", 30, seed=1)[1] != points
    budget, points = plan(dists, "random", 4, seed=3)
    assert budget == 4 and len({tuple(p.items()) for p in points}) == 4  # no repeats in a finite space
    assert plan(dists, "random", 6, seed=3)[1][:4] == points  # configuration c depends on c only
    continuous = search_distributions({"lam": {"low": 1.0, "high": 100.0, "log": True}})
    budget, points = plan(continuous, "random", 5, seed=0)
    assert budget == 5 and all(1.0 <= p["lam"] <= 100.0 for p in points)
    with pytest.raises(ConfigError, match="protocol.sampler=grid needs discrete values, but method.search_space.lam"):
        plan(continuous, "grid", 5, seed=0)
    assert plan({}, "tpe", 10, seed=0) == (1, [{}])
    assert plan(dists, "tpe", 10, seed=0) == (6, None)
    with pytest.raises(ConfigError, match="protocol.sampler='bayes' is unknown; choose one of: grid, random, tpe"):
        plan(dists, "bayes", 3, seed=0)


def test_study_storage_sits_beside_the_mlflow_store(tmp_path):
    assert storage_url("sqlite:///mlflow.db") == "sqlite:///optuna.db"
    assert storage_url(f"sqlite:///{tmp_path}/m/mlflow.db") == f"sqlite:///{tmp_path}/m/optuna.db"
    assert storage_url(str(tmp_path / "mlruns")) == f"sqlite:///{tmp_path}/optuna.db"
    assert storage_url("http://mlflow:5000", "postgresql://u@h/optuna") == "postgresql://u@h/optuna"
    with pytest.raises(ConfigError, match="tracking.uri=http://mlflow:5000 is not a local store"):
        storage_url("http://mlflow:5000")


def test_search_space_values_are_validated_before_any_run(make_config):
    cfg = make_config(*SMALL, "method=finetune", "method.search_space.lr={choices:[1000000.0,0.01]}")
    with pytest.raises(ConfigError, match=r"method.search_space.lr allows 1000000.0, which is invalid: method.lr must"):
        two_phase.run(cfg, tracker_of(cfg))
    cfg = make_config(*SMALL, "method=finetune", "+method.search_space.momentun={choices:[0.9]}")
    with pytest.raises(ConfigError, match="method.search_space.momentun is not a hyperparameter of 'finetune'"):
        two_phase.run(cfg, tracker_of(cfg))
    cfg = make_config("protocol=two_phase", "method=tent", "benchmark=digits_c")  # an accuracy cannot pick Tent's lr
    with pytest.raises(ConfigError, match="selection_metric='last_accuracy' does not score a test-time method; use "
                                          "mean_error or mean_error_at_5"):
        two_phase.run(cfg, tracker_of(cfg))
    cfg = make_config(*SMALL, "method=finetune", "protocol.selection_metric=forgetting")
    with pytest.raises(ConfigError, match="protocol.selection_metric='forgetting' is unknown"):
        two_phase.run(cfg, tracker_of(cfg))


def test_a_trial_whose_process_died_is_requeued_not_counted(tmp_path):
    dists = search_distributions({"lr": {"choices": [0.1, 0.01]}})
    _, points = plan(dists, "grid", 2, seed=0)

    def open_() -> SearchStudy:
        return SearchStudy(f"sqlite:///{tmp_path / 'optuna.db'}", "s", dists, "grid", 0, 2, tmp_path / "lock")

    study = open_()
    assert study.prepare(points) == []
    first = study.claim()
    dead = subprocess.Popen(["true"])
    dead.wait()
    first.set_user_attr("process", str(dead.pid))  # as if a killed process had claimed it
    study = open_()
    assert study.prepare(points) == [first.number]
    assert study.prepare(points) == []  # idempotent: nothing enqueued twice
    claimed = [study.claim(), study.claim()]
    assert study.claim() is None
    assert sorted(t.params["lr"] for t in claimed) == [0.01, 0.1]
    assert [t.user_attrs["origin"] for t in claimed if t.params == first.params] == [first.number]
    for t in claimed:
        study.complete(t, 0.5, {})
    assert study.counted(study.trials()) == 2  # the interrupted trial does not use up budget


def test_a_claim_cut_short_before_its_first_heartbeat_is_retried_not_waited_for(tmp_path):
    """A worker killed between Optuna's ``ask`` and its first heartbeat left a RUNNING trial that never beat: Optuna's
    stale check skips it, and every other worker waited for it forever (a Ray run hung this way)."""
    dists = search_distributions({"lr": {"choices": [0.1, 0.01]}})
    _, points = plan(dists, "grid", 2, seed=0)
    study = SearchStudy(f"sqlite:///{tmp_path / 'optuna.db'}", "s", dists, "grid", 0, 2, tmp_path / "lock",
                        heartbeat_s=1)
    study.prepare(points)
    dead = study.study.ask(dists)  # what the killed claim leaves: RUNNING, no heartbeat, no owner
    alive = study.claim()
    study.complete(alive, 0.5, {})
    claimed: list = []
    worker = threading.Thread(target=lambda: claimed.append(study.claim()), daemon=True)
    worker.start()
    worker.join(timeout=60)  # the grace period is 4 beats: about 4 s
    assert claimed, "the worker is still waiting for the dead claim"
    (retry,) = claimed
    frozen = {t.number: t for t in study.trials()}
    assert frozen[dead.number].state.name == "FAIL"
    assert frozen[retry.number].system_attrs["failed_trial"] == dead.number and retry.params == dead.params
    study.complete(retry, 0.25, {})
    assert study.claim() is None and study.counted(study.trials()) == 2


def test_tpe_claims_new_trials_until_the_budget_is_spent(tmp_path):
    dists = search_distributions({"lam": {"low": 1.0, "high": 100.0, "log": True}})
    budget, points = plan(dists, "tpe", 3, seed=0)
    study = SearchStudy(f"sqlite:///{tmp_path / 'optuna.db'}", "s", dists, "tpe", 0, budget, tmp_path / "lock")
    study.prepare(points)
    trials = []
    while (trial := study.claim()) is not None:
        trials.append(trial)
        study.complete(trial, trial.params["lam"] / 100, {})
    assert len(trials) == 3 and all(1.0 <= t.params["lam"] <= 100.0 for t in trials)
    assert study.best().number == max(trials, key=lambda t: t.params["lam"]).number


def test_phase2_seeds_that_diverge_stay_in_the_figure_and_are_counted(make_config, monkeypatch, capsys):
    """A selected setting that fails to transfer is what the protocol measures: no seed is dropped."""
    from fluxbench.errors import DivergedError
    from fluxbench.methods.finetune import Finetune
    from fluxbench.protocols.execution import SupervisedLoop

    cfg = make_config(*SMALL, "method=finetune", "protocol.n_trials=1", "protocol.tuning_seeds=1",
                      "protocol.num_seeds=2")
    original, trained = SupervisedLoop.experience, []

    def diverging_on_evaluation_data(self, method, stream, i, partial, device):
        if self.keep_diverged:  # phase 2 only: the tuning seeds train normally
            def train(exp):
                trained.append(exp.index)
                if exp.index == 2:
                    raise DivergedError("the training loss became nan (experience 2, epoch 0)")
                return Finetune.train_experience(method, exp)

            monkeypatch.setattr(method, "train_experience", train)
        return original(self, method, stream, i, partial, device)

    monkeypatch.setattr(SupervisedLoop, "experience", diverging_on_evaluation_data)
    tracker = tracker_of(cfg)
    result = two_phase.run(cfg, tracker)
    assert trained == [0, 1, 2, 0, 1, 2]  # each seed stops training where it diverged...
    summary = result["summary"]
    assert summary["phase2_diverged"] == 2 and summary["phase2_seeds"] == [0, 1] and summary["phase2_failed"] == []
    assert summary["two_phase"]["last_accuracy"]["n"] == 2  # ...and is scored as its model stood, not dropped
    parent = tracker.client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["phase2_diverged_seeds"] == 2
    seeds = [r for r in tracker.children(result["run_id"]) if r.data.tags.get(KIND_TAG) == "seed"]
    assert len(seeds) == 2 and all(r.data.metrics["diverged"] == 1.0 for r in seeds)
    assert "phase-2 seeds diverged: 2 of 2" in capsys.readouterr().out
