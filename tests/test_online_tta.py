"""The online TTA protocol: the MLflow run tree, what is scored, when methods are reset, every setting, the CLI."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from tta_helpers import build, domains_of, tta_config

from fluxbench.errors import ConfigError
from fluxbench.methods.tta_common import TestTimeMethod
from fluxbench.protocols import online_tta
from fluxbench.protocols.online_tta import adapt_stream, tta_metrics
from fluxbench.protocols.setup import method_context
from fluxbench.protocols.tta_data import seed_stream
from fluxbench.tracking import Tracker
from fluxbench.tracking.mlflow_store import HASH_TAG, KIND_TAG

TWO = ("defocus_blur", "contrast")


class Recorder(TestTimeMethod):
    """Predicts class 0 for everything, except that each call shifts its prediction (state that changes per batch);
    records every call."""

    def __init__(self, ctx) -> None:
        super().__init__(None, ctx)
        self.calls: list[tuple] = []
        self.returned: list[torch.Tensor] = []

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(("adapt", len(x)))
        logits = torch.zeros(len(x), 10)
        logits[:, len(self.returned) % 10] = 1.0  # this call's prediction; the next call predicts another class
        self.returned.append(logits)
        return logits

    def reset(self) -> None:
        self.calls.append(("reset",))


def recorder_run(setting: str, names=TWO):
    cfg = tta_config(names=names, **{"stream.setting": setting})
    domains, num_classes = domains_of(cfg)
    stream = seed_stream(cfg, domains, num_classes, seed=0)
    method = Recorder(method_context(cfg, num_classes))
    hits = adapt_stream(method, stream, 64, "cpu")
    return stream, method, hits


# -- the run tree in MLflow -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online_tta")
    cfg = tta_config("method=tent", "protocol.num_seeds=2", names=TWO, **{
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}", "tracking.experiment": "tta",
        "tracking.checkpoint_dir": str(tmp / "ckpt")})
    tracker = Tracker(cfg["tracking"]["uri"], "tta")
    return cfg, tracker, online_tta.run(cfg, tracker)


def test_parent_and_seed_runs_carry_the_tta_metrics(finished):
    cfg, tracker, out = finished
    parent = tracker.client.get_run(out["run_id"])
    tags = parent.data.tags
    assert parent.info.status == "FINISHED" and tags[KIND_TAG] == "protocol"
    assert (tags["protocol"], tags["method"], tags["benchmark"], tags["setting"]) == \
        ("online_tta", "tent", "digits_c", "continual")
    assert len(tags["data_fingerprint.evaluation"]) == 24 and len(tags[HASH_TAG]) == 20
    assert tags["source_model.default"].startswith("trained:")
    children = tracker.children(out["run_id"])
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    for child in children:
        assert child.data.tags[KIND_TAG] == "seed" and child.data.tags["phase"] == "evaluation"
        assert child.data.tags["source_model.default"] == tags["source_model.default"]
        m = child.data.metrics
        assert m["mean_error"] == pytest.approx((m["error.defocus_blur-5"] + m["error.contrast-5"]) / 2)
        assert 0 < m["mean_error"] < 0.5 and m["wall_time_s"] > 0
        history = tracker.client.get_metric_history(child.info.run_id, "error")
        assert sorted(h.step for h in history) == [0, 1]
        assert {h.step: h.value for h in history} == pytest.approx({0: m["error.defocus_blur-5"],
                                                                   1: m["error.contrast-5"]})
        manifest = yaml.safe_load(tracker.read_text(child.info.run_id, "stream_manifest.json"))
        assert [e["metadata"]["corruption"] for e in manifest["experiences"]] == list(TWO)
        assert len(manifest["experiences"][0]["test_ids"]) == 539
    means = [c.data.metrics["mean_error"] for c in children]
    assert parent.data.metrics["mean_error_mean"] == pytest.approx(np.mean(means))
    assert parent.data.metrics["mean_error_std"] == pytest.approx(np.std(means, ddof=1))
    assert "error.contrast-5_mean" in parent.data.metrics and "mean_error_ci95" in parent.data.metrics


def test_same_config_is_skipped_and_the_table_names_every_domain(finished, capsys):
    cfg, tracker, out = finished
    table = online_tta.summary_table("x", out["summary"])
    assert "mean_error" in table and "defocus_blur-5" in table and "contrast-5" in table
    again = online_tta.run(cfg, tracker)
    assert again["skipped"] and again["run_id"] == out["run_id"]
    assert "skipped" in capsys.readouterr().out
    assert len(tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'protocol'")) == 1


# -- what is scored ---------------------------------------------------------------------------------------------
def test_each_batch_is_scored_on_the_logits_adapt_returned_before_the_next_update():
    stream, method, hits = recorder_run("continual")
    returned = iter(method.returned)
    for exp, correct in zip(stream, hits):
        expected = np.concatenate([
            next(returned).argmax(1).numpy() == exp.test.labels[start:start + 64]
            for start in range(0, len(exp.test), 64)])
        assert np.array_equal(correct, expected)
    metrics = tta_metrics(stream, hits)
    assert metrics["error.contrast-5"] == pytest.approx(1 - hits[1].mean())
    # a method that predicts a new class after every call is scored on each call's own prediction
    assert len({int(r[0].argmax()) for r in method.returned}) == 10


def test_tent_is_scored_on_its_prediction_before_the_update():
    method, stream = build(tta_config("method=tent", names=TWO))
    fresh = copy.deepcopy(method.model)
    seen = []
    adapt = method.adapt

    def spy(x):
        logits = adapt(x)
        seen.append((x, logits))
        return logits

    method.adapt = spy
    hits = adapt_stream(method, stream[:1], 64, "cpu")
    x0, first = seen[0]
    assert torch.allclose(first, fresh(x0), atol=1e-6)  # the source model's output: scored before the step
    labels = stream[0].test.labels
    expected = np.concatenate([lg.argmax(1).numpy() for _, lg in seen]) == labels
    assert np.array_equal(hits[0], expected)


# -- resets and settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "resets_before"), [
    ("continual", [0]), ("reset_each_shift", [0, 1]), ("mixed", [0]),
])
def test_resets_happen_where_the_setting_says(setting, resets_before):
    stream, method, hits = recorder_run(setting)
    sizes = [-(-len(e.test) // 64) for e in stream]
    positions = [i for i, call in enumerate(method.calls) if call[0] == "reset"]
    starts = np.cumsum([0, *sizes])[:-1] + np.arange(len(sizes))  # call index of each experience's first call
    assert positions == [int(starts[k]) for k in resets_before]
    assert sum(c[1] for c in method.calls if c[0] == "adapt") == sum(len(e.test) for e in stream)


def starts_from_source(setting: str) -> list[bool]:
    """For each domain of a Tent run: is the method's state, when the domain's first batch arrives, the source's?"""
    method, stream = build(tta_config("method=tent", names=("defocus_blur", "frost", "contrast"),
                                      **{"stream.setting": setting}))
    initial = {k: v.clone() for k, v in method.state_dict().items()}
    recorded, pending, adapt = [], [True], method.adapt

    def spy(x: torch.Tensor) -> torch.Tensor:
        if pending[0]:
            recorded.append(all(torch.equal(v, initial[k]) for k, v in method.state_dict().items()))
            pending[0] = False
        return adapt(x)

    def next_domain(index: int, correct: np.ndarray) -> None:
        pending[0] = True

    method.adapt = spy
    adapt_stream(method, stream, 64, "cpu", after_experience=next_domain)
    return recorded


def test_reset_each_shift_starts_each_domain_from_the_source_state_continual_carries_over():
    assert starts_from_source("reset_each_shift") == [True, True, True]
    assert starts_from_source("continual") == [True, False, False]


def test_gradual_and_mixed_metrics():
    stream, _, hits = recorder_run("gradual", names=("contrast",))
    assert [e.metadata["severity"] for e in stream] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    metrics = tta_metrics(stream, hits)
    assert {f"error.contrast-{s}" for s in range(1, 6)} <= set(metrics)
    block = [1 - h.mean() for h in hits]
    assert metrics["mean_error"] == pytest.approx(np.mean(block))
    assert metrics["mean_error_at_5"] == pytest.approx(block[4])
    assert metrics["error.contrast-1"] == pytest.approx(1 - np.concatenate([hits[0], hits[8]]).mean())

    stream, _, hits = recorder_run("mixed")
    assert len(stream) == 1 and len(hits[0]) == 2 * 539
    metrics = tta_metrics(stream, hits)
    which = np.asarray(stream[0].metadata["sample_domain"])
    assert metrics["mean_error"] == pytest.approx(1 - hits[0].mean())
    for k, name in enumerate(TWO):
        assert metrics[f"error.{name}-5"] == pytest.approx(1 - hits[0][which == k].mean())


# -- user errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    (("method=finetune",), "not a test-time method"),
    (("method=tent", "protocol.batch_size=0"), "protocol.batch_size must be an integer >= 1"),
    (("method=tent", "stream.setting=sideways"), "unknown stream setting 'sideways'"),
    (("method=tent", "benchmark.corruptions.names=[fog,nope]"), "unknown corruption 'nope'"),
    (("method=tent", "protocol.online_eval=sideways"), "online_eval='sideways'; use one of offline, realistic"),
    (("method=tent", "protocol.speed_measure=vibes"), "protocol.speed_measure='vibes'"),
    (("method=tent", "protocol.relative_speed=0"), "protocol.relative_speed must be an integer >= 1"),
])
def test_bad_configs_are_config_errors_before_the_store_is_touched(overrides, message):
    with pytest.raises(ConfigError, match=message):
        online_tta.run(tta_config(*overrides), tracker=None)  # no tracker needed: checked before anything runs


def test_a_benchmark_without_corruptions_is_refused():
    cfg = tta_config("method=tent")
    cfg["benchmark"].pop("corruptions")
    with pytest.raises(ConfigError, match="defines no corruptions"):
        online_tta.run(cfg, tracker=None)


def test_command_line_run_with_a_stream_setting(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fluxbench.cli", "run", "protocol=online_tta", "benchmark=digits_c", "method=source",
         "stream.setting=reset_each_shift", "protocol.num_seeds=1", "benchmark.corruptions.names=[contrast]",
         "progress=false"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "source on digits_c (reset_each_shift)" in out.stdout and "contrast-5" in out.stdout
    assert (tmp_path / "mlflow.db").is_file()


def test_released_cifar10_c_files_stream_through_a_source_model_trained_on_cifar10(tmp_path):
    from conftest import compose_config
    from datasets_fixtures import write_cifar10
    from test_corruption_readers import PER_SEVERITY, write_cifar_c

    from fluxbench.methods import create_method
    from fluxbench.protocols.tta_data import load_domains

    write_cifar10(tmp_path, per_batch=8)
    written, labels = write_cifar_c(tmp_path)
    cfg = compose_config("protocol=online_tta", "benchmark=cifar10_c", "method=tent", f"data_root={tmp_path}",
                         "benchmark.corruptions.names=[gaussian_noise,fog]", "protocol.batch_size=3",
                         "benchmark.source_models.default.epochs=1", "benchmark.source_models.default.args.width=8")
    domains, num_classes = load_domains(cfg)
    assert num_classes == 10 and sorted(domains) == [("fog", 5), ("gaussian_noise", 5)]
    assert np.array_equal(domains[("fog", 5)].images, written["fog"][4 * PER_SEVERITY:])
    stream = seed_stream(cfg, domains, num_classes, seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes))
    assert method.model.recipe["train_on"] == [{"dataset": "cifar10", "parts": ["train"]}]
    hits = adapt_stream(method, stream, 3, "cpu")
    assert [len(h) for h in hits] == [PER_SEVERITY, PER_SEVERITY]
    order = [int(i.rsplit("/", 1)[1]) for i in stream[1].test.ids]
    assert np.array_equal(stream[1].test.labels, labels[order])
    assert set(tta_metrics(stream, hits)) == {"error.gaussian_noise-5", "error.fog-5", "mean_error"}


# -- realistic online evaluation (Alfarra et al., ICML 2024) --------------------------------------------------------
def realistic_run(tmp_path, *overrides: str) -> dict:
    cfg = tta_config("protocol.online_eval=realistic", *overrides, names=TWO, **{
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment": "tta",
        "tracking.checkpoint_dir": str(tmp_path / "ckpt")})
    tracker = Tracker(cfg["tracking"]["uri"], "tta")
    result = online_tta.run(cfg, tracker)
    (seed,) = [r for r in tracker.children(result["run_id"]) if r.data.tags.get(KIND_TAG) == "seed"]
    return seed.data.metrics


def test_a_method_three_times_slower_than_its_source_adapts_on_a_third_of_the_batches(tmp_path, monkeypatch):
    from fluxbench.methods.source import Source

    calls = {"adapt": 0, "infer": 0}
    original = Source.adapt

    def slow_adapt(self, x):  # three forward passes: three times the source model's FLOPs
        calls["adapt"] += 1
        for _ in range(2):
            original(self, x)
        return original(self, x)

    def infer(self, x):
        calls["infer"] += 1
        return original(self, x)

    monkeypatch.setattr(Source, "adapt", slow_adapt)
    monkeypatch.setattr(Source, "infer", infer)
    metrics = realistic_run(tmp_path, "method=source")
    batches = 2 * -(-539 // 64)  # two domains of 539 images, batches of 64: 18 batches per pass
    assert metrics["relative_speed"] == 3.0
    assert metrics["source_flops_per_batch"] * 3 == metrics["adapt_flops_per_batch"]
    assert metrics["adapted_fraction"] == pytest.approx(6 / 18)  # batches 0, 3, 6, ... of the stream
    # offline pass: every batch adapted; realistic pass: one in three; plus the measurement's warm copy
    assert calls["infer"] == batches - 6 and calls["adapt"] == batches + 6 + 1
    assert metrics["offline_mean_error"] == pytest.approx(metrics["mean_error"])  # the source model never changes


def test_tent_online_error_is_reported_beside_its_offline_error(tmp_path):
    metrics = realistic_run(tmp_path, "method=tent")
    assert metrics["relative_speed"] >= 2  # forward and backward cost more than the source's forward
    assert metrics["adapted_fraction"] == pytest.approx(1 / metrics["relative_speed"], abs=0.06)
    assert {"mean_error", "offline_mean_error", "error.contrast-5", "offline_error.contrast-5"} <= set(metrics)
    assert metrics["mean_error"] != metrics["offline_mean_error"]  # fewer updates: a different (online) figure
