"""two_phase for test-time methods: Tent tuned on held-out corruptions, evaluated on disjoint ones (digits-C)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import compose_config

from fluxbench.errors import LeakageError
from fluxbench.protocols import two_phase
from fluxbench.tracking import Tracker
from fluxbench.tracking import layout as L
from fluxbench.tracking.mlflow_store import KIND_TAG

TUNING = ("speckle_noise", "gaussian_blur")
EVALUATION = ("shot_noise", "contrast")
LRS = (0.0001, 0.01)
# Tent with lr alone to search (a grid of two), one seed per phase, two short domain lists
TENT = ("protocol=two_phase_tta", "method=tent", "benchmark=digits_c", "~method.search_space.steps",
        f"method.search_space.lr={{choices:[{LRS[0]},{LRS[1]}]}}", "protocol.sampler=grid", "protocol.n_trials=2",
        "protocol.tuning_seeds=1", "protocol.num_seeds=1", f"benchmark.corruptions.tuning_names=[{','.join(TUNING)}]",
        f"benchmark.corruptions.names=[{','.join(EVALUATION)}]")


def tracker_of(cfg: dict) -> Tracker:
    return Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])


@pytest.fixture(scope="module")
def tent_two_phase(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_phase_tta")
    cfg = compose_config(*TENT, f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
                         f"tracking.checkpoint_dir={root / 'checkpoints'}", "tracking.experiment=tests")
    return cfg, two_phase.run(cfg, tracker_of(cfg))


def domains_of(run) -> set[str]:
    return {k.removeprefix("error.").rsplit("-", 1)[0] for k in run.data.metrics if k.startswith("error.")}


def test_phases_run_on_disjoint_corruptions(tent_two_phase):
    cfg, result = tent_two_phase
    tracker = tracker_of(cfg)
    parent = tracker.client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["protocol"] == "two_phase"
    assert parent.data.tags[L.RANK_TAG] == "mean_error" and parent.data.tags[L.RANK_ORDER_TAG] == "min"
    trials = tracker.children(result["run_id"], f"tags.`{KIND_TAG}` = 'trial'")
    assert len(trials) == 2
    for trial in trials:
        (seed,) = tracker.children(trial.info.run_id)
        assert domains_of(seed) == set(TUNING)
        assert json.loads(seed.data.params["benchmark.corruptions.names"]) == list(TUNING)
        assert seed.data.params["protocol.batch_size"] == "64"  # the online loop's settings are in the seed config
    (phase2,) = tracker.children(result["run_id"], "tags.phase = 'evaluation'")
    assert domains_of(phase2) == set(EVALUATION)
    tags = parent.data.tags
    assert tags["data_fingerprint.tuning"] != tags["data_fingerprint.evaluation"]
    assert phase2.data.tags["source_model.default"] == seed.data.tags["source_model.default"]  # the same source model


def test_the_selection_is_read_back_and_phase2_uses_it(tent_two_phase):
    cfg, result = tent_two_phase
    tracker = tracker_of(cfg)
    parent = tracker.client.get_run(result["run_id"])
    trials = tracker.children(result["run_id"], f"tags.`{KIND_TAG}` = 'trial'")
    assert {float(t.data.params["lr"]) for t in trials} == set(LRS)
    best = min(trials, key=lambda t: (t.data.metrics["score"], int(t.data.tags["trial"])))  # lower error wins
    selected = float(parent.data.tags["selected.lr"])
    assert selected == float(best.data.params["lr"]) and result["selected"] == {"lr": selected}
    (phase2,) = tracker.children(result["run_id"], "tags.phase = 'evaluation'")
    assert float(phase2.data.params["method.lr"]) == selected
    error = phase2.data.metrics["mean_error"]
    assert parent.data.metrics["mean_error_mean"] == pytest.approx(error)
    assert parent.data.metrics["conventional_mean_error"] == pytest.approx(best.data.metrics["score"])
    # the gap says how much tuning on the reported stream would flatter Tent: two-phase minus conventional error
    assert parent.data.metrics["overestimation_gap"] == pytest.approx(error - best.data.metrics["score"])
    summary = json.loads(tracker.read_text(result["run_id"], "summary.json"))
    assert summary["selected"] == {"lr": selected} and summary["selection_metric"] == "mean_error"
    assert summary["conventional"]["summary"]["mean_error"]["mean"] == pytest.approx(best.data.metrics["score"])
    assert 0.0 < error < 0.9 and np.isfinite(summary["overestimation_gap"])


def test_a_corruption_in_both_phases_is_refused_in_one_line(make_config):
    cfg = make_config(*TENT, "benchmark.corruptions.tuning_names=[fog,speckle_noise]",
                      "benchmark.corruptions.names=[contrast,fog]")
    tracker = tracker_of(cfg)
    with pytest.raises(LeakageError) as err:
        two_phase.run(cfg, tracker)
    message = str(err.value)
    assert "\n" not in message and message.startswith("corruption fog is in both phases")
    assert tracker.client.search_runs([tracker.experiment_id]) == []


def test_default_split_is_the_held_out_four_against_the_standard_fifteen():
    from fluxbench.protocols import two_phase_tta
    from fluxbench.streams.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS

    cfg = compose_config("protocol=two_phase_tta", "method=tent", "benchmark=digits_c")
    assert two_phase_tta.phase_names(cfg, "tuning") == list(HELD_OUT_CORRUPTIONS)
    assert two_phase_tta.phase_names(cfg, "evaluation") == list(CORRUPTIONS)
    two_phase_tta.check_config(cfg)  # disjoint, selected by mean_error
    seed_cfg = two_phase.seed_config(cfg, {"lr": 0.01}, "tuning")
    assert seed_cfg["benchmark"]["corruptions"]["names"] == list(HELD_OUT_CORRUPTIONS)
    assert seed_cfg["protocol"]["batch_size"] == 64 and seed_cfg["method"]["lr"] == 0.01


def test_the_report_shows_tent_with_its_conventional_error_and_gap(tent_two_phase, tmp_path):
    from fluxbench.reports.build import build, write

    cfg, result = tent_two_phase
    parent = tracker_of(cfg).client.get_run(result["run_id"]).data.metrics
    report = build(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    (row,) = report.two_phase.to_dict("records")
    assert row["method"] == "tent" and row["benchmark"] == "digits_c" and row["metric"] == "mean_error"
    assert row["conventional"] == pytest.approx(parent["conventional_mean_error"])
    assert row["two_phase"] == pytest.approx(parent["mean_error_mean"])
    assert row["gap"] == pytest.approx(parent["overestimation_gap"], abs=1e-6)  # two-phase minus conventional error
    write(report, tmp_path)
    text = (tmp_path / "leaderboard.md").read_text()
    assert "### digits_c (mean error (%))" in text and "| tent" in text
