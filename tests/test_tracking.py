"""The MLflow run tree a protocol call leaves behind, read back through MLflow's own client."""

import shutil

import numpy as np
import pytest
import yaml
from conftest import compose_config
from mlflow.tracking import MlflowClient

from fluxbench.protocols import conventional
from fluxbench.tracking import Tracker
from fluxbench.tracking.mlflow_store import HASH_TAG, read_matrix


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, empty_store_template):
    """One real conventional run (two seeds), shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("tracking")
    shutil.copy(empty_store_template, root / "mlflow.db")
    cfg = compose_config("method=finetune", "method.epochs=1", "protocol.num_seeds=2",
                         f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.checkpoint_dir={root / 'ckpt'}",
                         "tracking.experiment=tests")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    out = conventional.run(cfg, tracker)
    return cfg, tracker, out


def test_parent_and_one_nested_run_per_seed(finished_run):
    cfg, tracker, out = finished_run
    client: MlflowClient = tracker.client
    parent = client.get_run(out["run_id"])
    assert parent.info.status == "FINISHED"
    children = tracker.children(out["run_id"])
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    # the parent holds the aggregate; its mean is the mean of the children's
    lasts = [c.data.metrics["last_accuracy"] for c in children]
    assert parent.data.metrics["last_accuracy_mean"] == pytest.approx(np.mean(lasts))


def test_params_are_the_flattened_resolved_config(finished_run):
    cfg, tracker, out = finished_run
    params = tracker.client.get_run(out["run_id"]).data.params
    assert params["method.name"] == "finetune"
    assert params["method.lr"] == str(cfg["method"]["lr"])
    assert params["stream.scenario"] == "B0-Inc2"  # interpolation resolved from the benchmark
    assert params["backbone.kind"] == "tiny_vit"


def test_metrics_per_experience_are_stepped(finished_run):
    _, tracker, out = finished_run
    child = tracker.children(out["run_id"])[0]
    history = tracker.client.get_metric_history(child.info.run_id, "accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    assert len(tracker.client.get_metric_history(child.info.run_id, "acc_exp0")) == 5


def test_artifacts_matrix_config_and_manifest(finished_run):
    cfg, tracker, out = finished_run
    child = tracker.children(out["run_id"])[0]
    R = read_matrix(tracker.read_text(child.info.run_id, "accuracy_matrix.csv"))
    assert R.shape == (5, 5)
    assert child.data.metrics["last_accuracy"] == pytest.approx(
        np.average(R[-1], weights=np.asarray(eval(child.data.tags["fluxbench.sizes"]))), abs=1e-5)
    manifest = yaml.safe_load(tracker.read_text(child.info.run_id, "stream_manifest.json"))
    assert len(manifest["experiences"]) == 5 and sorted(manifest["class_order"]) == list(range(10))
    config = yaml.safe_load(tracker.read_text(out["run_id"], "config.yaml"))
    assert config["method"]["name"] == "finetune" and config["seed"] == cfg["seed"]


def test_tags_hash_commit_versions_fingerprint(finished_run):
    _, tracker, out = finished_run
    tags = tracker.client.get_run(out["run_id"]).data.tags
    assert len(tags[HASH_TAG]) == 20
    assert tags["git_commit"]
    assert tags["version.torch"].startswith("2.14.1")
    assert len(tags["data_fingerprint.evaluation"]) == 24


def test_same_config_again_is_skipped(finished_run, capsys):
    cfg, tracker, out = finished_run
    again = conventional.run(cfg, tracker)
    assert again["skipped"] and again["run_id"] == out["run_id"]
    assert "skipped" in capsys.readouterr().out
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`fluxbench.kind` = 'protocol'")
    assert len(parents) == 1


def test_interrupted_run_resumes_from_its_checkpoint_with_identical_numbers(make_config, monkeypatch):
    from fluxbench.protocols import execution

    cfg = make_config("method=finetune", "method.epochs=1", "protocol.num_seeds=1")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    reference = conventional.run(make_config("method=finetune", "method.epochs=1", "protocol.num_seeds=1",
                                             "tracking.experiment=reference"),
                                 Tracker(cfg["tracking"]["uri"], "reference"))
    original = execution.accuracy
    calls = {"n": 0}

    def crash_after_three_experiences(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # experiences 0,1,2 evaluated 1+2+3 = 6 times; crash in the 4th
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(execution, "accuracy", crash_after_three_experiences)
    with pytest.raises(KeyboardInterrupt):
        conventional.run(cfg, tracker)
    monkeypatch.setattr(execution, "accuracy", original)
    resumed = conventional.run(cfg, tracker)
    ref = reference["seeds"][0].matrix
    np.testing.assert_array_equal(resumed["seeds"][0].matrix, ref)
    assert len(tracker.children(resumed["run_id"])) == 1


def test_a_fresh_local_store_is_a_copy_of_a_migrated_one_with_its_own_default_experiment(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    migrated = tmp_path / "migrated.db"
    MlflowClient(tracking_uri=f"sqlite:///{migrated}").search_experiments()
    tracker = Tracker(f"sqlite:///{tmp_path / 'seeded.db'}", "fluxbench")

    def schema(path):
        # each statement's clauses as a set: alembic's batch migrations write constraints in hash order
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT name, sql FROM sqlite_master").fetchall()
            return (db.execute("SELECT version_num FROM alembic_version").fetchall(),
                    {name: sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()) for name, sql in rows})

    assert schema(tmp_path / "seeded.db") == schema(migrated)
    default = tracker.client.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    # the experiment fluxbench made lives beside the store, and the store works as any other
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert not list(tmp_path.glob(".seeded.db.*.partial"))
