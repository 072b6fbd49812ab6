"""IBCL's baselines (specs/ibcl.md section 5): preference-weighted replay and VCL, one training run per preference,
on the preference protocol's digit pairs, and their cost against IBCL's zero-shot preference models."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import compose_config

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method
from fluxbench.protocols import preference
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything
from fluxbench.tracking import Tracker

BASELINES = ("pref_replay", "vcl")
SMALL = ("protocol.prefs_per_task=3", "protocol.sweep_points=3", "method.epochs=3")


@cache
def trained(name: str, tasks: int):
    cfg = compose_config(f"method={name}", "benchmark=digits_pairs")
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes=10))
    for exp in stream[:tasks]:
        method.train_experience(exp)
    return method, stream


@pytest.mark.parametrize("name", BASELINES)
def test_each_preference_is_one_training_run(name):
    method, stream = trained(name, 2)
    before = (method.models_trained, method.batch_updates)
    assert before[0] == 2  # the continual state: one run per task
    models = method.preference_models([0.3, 0.7])
    assert method.models_trained == before[0] + 1 and method.batch_updates > before[1]
    assert len(models) == (1 if name == "pref_replay" else method.hparams.num_models_per_pref)
    assert all(0 <= method.task_accuracy(m, stream[t]) <= 1 for m in models for t in (0, 1))


@pytest.mark.parametrize("name", BASELINES)
def test_the_preference_trades_task_1_against_task_2(name):
    method, stream = trained(name, 2)
    seed_everything(0)
    first = [np.mean([method.task_accuracy(m, stream[0]) for m in method.preference_models([w, 1 - w])])
             for w in (0.0, 1.0)]
    assert first[1] > first[0] + 0.1  # all weight on task 1 beats none on it
    seed_everything(0)
    assert method.task_accuracy(method.preference_models([1.0, 0.0])[0], stream[0]) > 0.9


@pytest.mark.parametrize("name", BASELINES)
def test_a_preference_of_the_wrong_length_fails_in_one_line(name):
    method, _ = trained(name, 2)
    with pytest.raises(ConfigError, match="one weight per task") as err:
        method.preference_models([1.0])
    assert "\n" not in str(err.value)


def test_baselines_cost_more_than_ibcl_on_the_same_preferences(make_config):
    costs = {}
    for name in ("ibcl", *BASELINES):
        cfg = make_config("protocol=preference", f"method={name}", "benchmark=digits_pairs", *SMALL,
                          f"tracking.experiment={name}")
        seed = preference.run(cfg, Tracker(cfg["tracking"]["uri"], name))["seeds"][0]
        costs[name] = (seed.metrics["models_trained"], seed.metrics["batch_updates"])
        assert np.isfinite(seed.metrics["avg_per_task_acc_mean"])
    # 5 tasks, preferences [1] then 3 per task, and the 3-point sweep after task 1: 5 + 13 + 3 runs
    assert costs["pref_replay"][0] == costs["vcl"][0] == 5 + 1 + 4 * 3 + 3
    assert costs["ibcl"][0] == 15  # m = 3 per task, whatever the preferences
    for name in BASELINES:
        assert costs[name][0] > costs["ibcl"][0] and costs[name][1] > costs["ibcl"][1]
    print("costs (models trained, batch updates):", costs)


@pytest.mark.parametrize("name", BASELINES)
def test_a_resumed_run_matches_a_fresh_one(make_config, monkeypatch, name):
    from fluxbench.protocols.preference import PreferenceLoop

    args = ("protocol=preference", f"method={name}", "benchmark=digits_pairs", *SMALL)
    cfg = make_config(*args)
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    original = PreferenceLoop.experience

    def crash(self, method, stream, i, partial, device):
        if i == 3:
            raise RuntimeError("crash before experience 3")
        return original(self, method, stream, i, partial, device)

    monkeypatch.setattr(PreferenceLoop, "experience", crash)
    with pytest.raises(RuntimeError):
        preference.run(cfg, tracker)
    monkeypatch.undo()
    resumed = preference.run(cfg, tracker)["seeds"][0]
    fresh_cfg = make_config(*args, "tracking.experiment=fresh")
    fresh = preference.run(fresh_cfg, Tracker(fresh_cfg["tracking"]["uri"], "fresh"))["seeds"][0]
    np.testing.assert_array_equal(resumed.matrix, fresh.matrix)
    assert resumed.metrics["batch_updates"] == fresh.metrics["batch_updates"]


def test_bad_hyperparameters_fail_in_one_line():
    cfg = compose_config("method=vcl", "benchmark=digits_pairs", "method.prior_std=0")
    with pytest.raises(ConfigError, match="prior_std must be in") as err:
        create_method(cfg["method"], method_context(cfg, num_classes=10))
    assert "\n" not in str(err.value)
