"""IBCL (specs/ibcl.md section 8) on the embedded default's binary digit pairs, and the preference protocol."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from conftest import compose_config

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method
from fluxbench.methods.credal_set import CredalSet, check_preference
from fluxbench.protocols import preference
from fluxbench.protocols.preference import PreferenceLoop
from fluxbench.protocols.preference_metrics import generate_preferences, standard_bwt, weighted_per_task
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import PREFERENCE_ACCURACIES_ARTIFACT, PREFERENCES_ARTIFACT


@cache
def trained(tasks: int, *overrides: str):
    cfg = compose_config("method=ibcl", "benchmark=digits_pairs", *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes=10))
    for exp in stream[:tasks]:
        method.train_experience(exp)
    return method, stream


def test_digit_pairs_are_binary_tasks_labelled_0_1():
    _, stream = trained(0)
    assert [e.classes for e in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    method, _ = trained(1)
    _, labels = method.task_features(stream[3], "test")
    assert set(labels.tolist()) == {0, 1}


def test_after_task_0_the_extreme_points_follow_their_prior_std_and_agree_as_classifiers():
    method, stream = trained(1)
    posts = method.credal.buffer
    assert len(posts) == 3 and method.credal.growth == [3]
    sigmas = [float(p.flat()[1].mean()) for p in posts]
    assert sigmas == sorted(sigmas) and sigmas[-1] - sigmas[0] > 0.03  # priors 0.2 < 0.25 < 0.3
    feats, _ = method.task_features(stream[0], "test")
    from fluxbench.methods.bayesian_head import head_logits

    preds = [head_logits(p.mu, feats) > 0 for p in posts]
    assert all(float((p == preds[0]).float().mean()) > 0.9 for p in preds)  # the means make the same decisions


def test_posterior_means_reach_a_plain_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    method, stream = trained(1)  # after task 0 (spec section 8.1)
    x, y = method.task_features(stream[0], "train")
    xt, yt = method.task_features(stream[0], "test")
    reference = LogisticRegression(max_iter=2000).fit(x.numpy(), y.numpy()).score(xt.numpy(), yt.numpy())
    for post in method.credal.buffer:
        assert method.task_accuracy(post.mu, stream[0]) >= reference - 0.05


def test_two_task_sweep_trades_task_1_against_task_2():
    method, stream = trained(2)
    seed_everything(0)
    sweep = np.array(preference.sweep(method, stream, 11))  # t = weight of task 1 (index 0)
    first, second = sweep[:, 0], sweep[:, 1]
    assert np.all(np.diff(first) >= -0.05) and first[-1] >= first[0]  # rises (or stays at its ceiling)
    assert second[0] > second[-1] + 0.1 and np.corrcoef(np.linspace(0, 1, 11), second)[0, 1] < -0.8


def test_100_preference_models_are_built_without_any_training(monkeypatch):
    method, _ = trained(2)
    before = method.credal.state()
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda *a, **k: steps.append(1))
    prefs = generate_preferences(2, 100, seed=0)[1]
    models = [m for w in prefs for m in method.preference_models(w, num_models=1)]
    assert len(models) == 100 and steps == [] and method.models_trained == 6
    after = method.credal.state()
    assert all(torch.equal(a["mu"][n], b["mu"][n]) for a, b in zip(before["buffer"], after["buffer"]) for n in a["mu"])


def test_with_d_above_0_the_buffer_grows_sub_linearly_and_reuses_posteriors():
    method, _ = trained(5, "method.discard_threshold=0.02")
    growth = method.credal.growth
    assert growth[-1] < 3 * 5 and all(b <= a + 3 for a, b in zip([0, *growth], growth)) and method.credal.reuse
    for slots in method.credal.slots:  # every extreme point resolves to a buffered posterior
        assert len(slots) == 3 and all(0 <= k < len(method.credal.buffer) for k in slots)
    linear, _ = trained(5, "method.discard_threshold=0.0")
    assert linear.credal.growth == [3, 6, 9, 12, 15] and not linear.credal.reuse


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_hdr_mode_code_samples_near_the_mean_paper_mode_spreads(mode):
    method, stream = trained(2, f"method.hdr_mode={mode}")
    seed_everything(0)
    accs = np.array([[method.task_accuracy(m, stream[t]) for t in (0, 1)]
                     for w in ([0.5, 0.5], [0.2, 0.8], [0.8, 0.2]) for m in method.preference_models(w)])
    spread = accs.reshape(3, 10, 2).std(1).mean()
    assert spread < 1e-3 if mode == "code" else spread > 5e-3


def test_per_element_sampling_draws_each_scalar():
    method, _ = trained(1, "method.hdr_mode=paper", "method.sampling=per_element")
    model = method.preference_models([1.0], num_models=1)[0]
    post = method.credal.combine([1.0])
    rel = (model["fc1.weight"] - post.mu["fc1.weight"]) / post.sigma["fc1.weight"]
    assert rel.std() > 0.1  # per tensor, every entry would share one relative position (std 0)


def test_preference_metrics_follow_upstream_weighting():
    prefs = [[0.25, 0.75], [0.75, 0.25]]
    accs = np.array([[[0.6, 1.0]], [[1.0, 0.2]]])  # (P, K, tasks)
    # task 0: weights 0.25 and 0.75 -> 0.25 * 0.6 + 0.75 * 1.0; task 1: 0.75 * 1.0 + 0.25 * 0.2
    np.testing.assert_allclose(weighted_per_task(accs, prefs), [0.9, 0.8])
    A = np.array([[0.9, np.nan], [0.7, 0.8]])
    assert standard_bwt(A) == pytest.approx(-0.2)
    assert generate_preferences(3, 10, 0) == generate_preferences(3, 10, 0)  # the same for every method


def test_preference_protocol_logs_and_resumes_identically(make_config, monkeypatch):
    cfg = make_config("protocol=preference", "method=ibcl", "benchmark=digits_pairs", "protocol.prefs_per_task=3",
                      "method.num_models_per_pref=3", "method.epochs=3")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    original = PreferenceLoop.experience

    def crash(self, method, stream, i, partial, device):
        if i == 2:
            raise RuntimeError("crash before experience 2")
        return original(self, method, stream, i, partial, device)

    monkeypatch.setattr(PreferenceLoop, "experience", crash)
    with pytest.raises(RuntimeError):
        preference.run(cfg, tracker)
    monkeypatch.undo()
    resumed = preference.run(cfg, tracker)["seeds"][0]
    fresh_cfg = make_config("protocol=preference", "method=ibcl", "benchmark=digits_pairs", "protocol.prefs_per_task=3",
                            "method.num_models_per_pref=3", "method.epochs=3", "tracking.experiment=fresh")
    fresh = preference.run(fresh_cfg, Tracker(fresh_cfg["tracking"]["uri"], "fresh"))["seeds"][0]
    np.testing.assert_array_equal(resumed.matrix, fresh.matrix)
    for key in ("avg_per_task_acc_mean", "bwt_mean", "adjacent_task_difference_mean", "models_trained"):
        assert resumed.metrics[key] == fresh.metrics[key]
    assert resumed.metrics["models_trained"] == 15 and resumed.metrics["batch_updates"] > 0
    details = tracker.read_text(resumed.run_id, PREFERENCE_ACCURACIES_ARTIFACT)
    assert '"sweep"' in details
    parent = tracker.client.get_run(resumed.tags["mlflow.parentRunId"])
    assert "preferences" in tracker.read_text(parent.info.run_id, PREFERENCES_ARTIFACT)


@pytest.mark.parametrize("override, message", [
    ("method.alpha=1.5", "alpha must be in (0, 1)"),
    ("method.alpha=0", "alpha must be in (0, 1)"),
    ("method.hdr_mode=exact", "hdr_mode must be one of"),
    ("method.sampling=per_row", "sampling must be one of"),
    ("method.prior_stds=[]", "prior_stds must be a non-empty list"),
])
def test_bad_hyperparameters_fail_in_one_line(override, message):
    cfg = compose_config("method=ibcl", "benchmark=digits_pairs", override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        create_method(cfg["method"], method_context(cfg, num_classes=10))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("pref, message", [
    ([0.5, 0.6], "on the simplex"), ([1.2, -0.2], "on the simplex"), ([1.0], "one weight per task"),
    ([0.3, 0.3, 0.4], "one weight per task"), (["a", 1], "list of 2 numbers"),
])
def test_bad_preferences_fail_in_one_line(pref, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_preference(pref, 2)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        CredalSet().combine(pref)


def test_a_non_binary_stream_fails_in_one_line(make_config):
    cfg = compose_config("method=ibcl", "stream.classes_per_exp=3")
    stream = build_stream(cfg, load_split(cfg, "evaluation"), seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes=10))
    with pytest.raises(ConfigError, match="needs binary tasks") as err:
        method.train_experience(stream[0])
    assert "\n" not in str(err.value)
    cfg = make_config("protocol=preference", "method=ibcl", "stream.classes_per_exp=3")
    with pytest.raises(ConfigError, match="needs binary tasks"):
        preference.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    cfg = make_config("protocol=preference", "method=finetune", "benchmark=digits_pairs")
    with pytest.raises(ConfigError, match="does not build models for preferences"):
        preference.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
