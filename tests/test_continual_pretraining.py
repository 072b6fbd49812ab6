"""protocol=continual_pretraining on the embedded digits FiF (spec fomo_in_flux.md section 11 observables):
mixture arithmetic, buffer provenance, budget arithmetic, the zero-shot point, dynamics, resume, bad input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import compose_config

from fluxbench.errors import ConfigError
from fluxbench.fomo import zeroshot
from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.methods import create_method
from fluxbench.methods.registry import get_method, list_methods
from fluxbench.protocols import continual_pretraining as cp
from fluxbench.protocols import with_protocol_defaults
from fluxbench.protocols.cpt.mixture import check_mixture, sub_batch_sizes
from fluxbench.protocols.cpt.pools import MixedBatches
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import DATASET_TASK_ARTIFACT, FAILURE_TAG, KIND_SEED, KIND_TAG

FAST = ("benchmark.num_tasks=2", "protocol.budget.steps_per_task=4", "protocol.batch_size=16")


def config(method: str, *extra: str, store: dict | None = None) -> dict:
    named = {e.partition("=")[0] for e in extra}
    fast = [f for f in FAST if f.partition("=")[0] not in named]
    items = with_protocol_defaults(["protocol=continual_pretraining", f"method={method}", *fast, *extra])
    return compose_config(*items, *(f"{k}={v}" for k, v in (store or {}).items()))


@functools.cache
def run_untracked(method: str, *extra: str) -> tuple[dict, list]:
    """One seed through the loop, without MLflow: (result metrics, per-experience step metrics)."""
    cfg = config(method, *extra)
    opts, deviation = cp.options(cfg, bool(cfg["benchmark"].get("pretraining_pool")))
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    loop = cp.PretrainingLoop(cfg, bench, opts, cp.measure_budget(cfg, bench, opts), deviation)
    torch.manual_seed(0)
    stream = loop.stream(0)
    ctx = loop.context(stream)
    method_obj = create_method(cfg["method"], ctx)
    partial = loop.begin(stream)
    steps = [loop.experience(method_obj, stream, i, partial, ctx.device) for i in range(loop.num_experiences())]
    return loop.result(stream, partial)[0], steps


def test_the_new_kind_is_registered_and_kept_out_of_the_other_protocols():
    kinds = {n: get_method(n).kind for n in list_methods()}
    assert {n for n, k in kinds.items() if k == "pretraining"} >= {"cpt_finetune", "locked_text", "locked_image",
                                                                   "cpt_lora", "ema_merge", "bitfit", "zs_merge",
                                                                   "ft_merge", "lnfit", "cpt_ewc", "cpt_si"}
    assert kinds["finetune"] == "supervised"  # the supervised finetune keeps its name
    cfg = compose_config("protocol=conventional", "method=ema_merge", "benchmark=fomo_digits", "backbone=tiny_clip")
    with pytest.raises(ConfigError, match="continual_pretraining"):
        from fluxbench.protocols.preflight import check_method_kind

        check_method_kind(cfg, "supervised")


def test_sub_batches_are_11_11_10_at_32_and_the_empty_buffer_share_is_redistributed():
    mix = check_mixture(None)
    assert sub_batch_sizes(32, mix) == {"pretraining": 11, "update": 11, "buffer": 10}
    assert sub_batch_sizes(512, mix) == {"pretraining": 169, "update": 175, "buffer": 168}
    first = sub_batch_sizes(32, mix, available=["pretraining", "update"])
    assert first == {"pretraining": 16, "update": 16, "buffer": 0}
    _, steps = run_untracked("cpt_finetune")
    assert [s["step.batch.buffer"] for s in steps[1:]] == [0.0, 5.0]  # task 1: no buffer; task 2: 16 * 0.33
    assert steps[1]["step.batch.update"] + steps[1]["step.batch.pretraining"] == 16


def test_buffer_samples_come_only_from_earlier_tasks():
    cfg = config("cpt_finetune", "benchmark.num_tasks=4")
    opts, dev = cp.options(cfg, True)
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    loop = cp.PretrainingLoop(cfg, bench, opts, cp.measure_budget(cfg, bench, opts), dev)
    stream = loop.stream(0)
    method = create_method(cfg["method"], loop.context(stream))
    for task in range(4):
        pools = loop._task_pools(method, stream, task)
        sizes = sub_batch_sizes(32, opts["data_mixture"], [p for p, v in pools.items() if v is not None])
        draws = MixedBatches(pools, sizes, 0, task)
        for _ in range(5):
            batch = draws.next()
            assert set(batch["update"].tasks.tolist()) == {task}
            assert set(batch["pretraining"].tasks.tolist()) == {-1}
            if task == 0:
                assert "buffer" not in batch
            else:
                assert len(batch["buffer"]) == 10 and set(batch["buffer"].tasks.tolist()) <= set(range(task))
                earlier = {c for t in range(task) for c in stream[t].classes}
                assert set(batch["buffer"].labels.tolist()) <= earlier


def test_budget_gives_peft_and_locked_image_more_steps_than_finetune():
    methods = ("cpt_finetune", "cpt_lora", "locked_image", "ema_merge", "bitfit", "lnfit")
    steps = {m: run_untracked(m)[0] for m in methods}
    ft = steps["cpt_finetune"]
    assert ft["budget.steps_per_task"] == 4 and ft["budget.memory_multiplier"] == 1.0
    for name, r in steps.items():
        budget = r["budget.budget_gmafs_per_task"]
        assert budget == pytest.approx(4 * ft["budget.gflops_per_step"])
        assert r["budget.steps_per_task"] == np.floor(budget / r["budget.mafs_per_step"]), name
    assert steps["cpt_lora"]["budget.steps_per_task"] > 4
    assert steps["locked_image"]["budget.steps_per_task"] > steps["cpt_lora"]["budget.steps_per_task"]
    assert steps["ema_merge"]["budget.memory_multiplier"] == 1.0  # the running merge is not in the step
    for name in ("bitfit", "lnfit"):  # paper Tab. 4: multiplier 0.66, 3179 steps against finetune's 1420
        assert steps[name]["budget.memory_multiplier"] < 1.0, name
        assert steps[name]["budget.gflops_per_step"] < ft["budget.gflops_per_step"], name  # no weight grads
        assert steps[name]["budget.steps_per_task"] > 4, name


def test_the_zero_shot_point_equals_the_zero_shot_evaluation_of_the_same_checkpoint():
    result, steps = run_untracked("cpt_finetune")
    cfg = config("cpt_finetune")
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    model = cp.method_context(cfg, 40).build_backbone().eval()
    table = zeroshot.zero_shot_table(model, bench.reader, [*bench.adapt_datasets, *bench.eval_datasets])
    for name, value in table.items():
        assert steps[0][f"step.acc.{name}"] == pytest.approx(value)
    means = zeroshot.role_means(bench.reader, table)
    assert result["A_KA_zero_shot"] == pytest.approx(means["adapt"])
    assert result["A_ZS_zero_shot"] == pytest.approx(means["eval"])


# the main job's settings (4 tasks, 20 full-fine-tuning steps at B=32, lr 1e-4): about 30 s per method. Shorter
# or hotter runs raise A_ZS too on this toy default (its evaluation-only sets are the same digits, rendered
# otherwise), so the retention observable needs the real setting
DYNAMICS = ("benchmark.num_tasks=4", "protocol.budget.steps_per_task=20", "protocol.batch_size=32")


def test_finetune_raises_ka_and_lowers_zs_and_ema_merge_retains_more():
    ft, _ = run_untracked("cpt_finetune", *DYNAMICS)
    ema, _ = run_untracked("ema_merge", *DYNAMICS)
    assert ft["A_KA"] > ft["A_KA_zero_shot"] + 0.05
    assert ft["A_ZS"] < ft["A_ZS_zero_shot"]
    assert ema["A_ZS"] > ft["A_ZS"]
    assert ema["A_KA"] > ema["A_KA_zero_shot"]


@pytest.mark.parametrize("override, message", [
    ("protocol.data_mixture.buffer=0.5", "must sum to 1"),
    ("protocol.data_mixture.buffer=-0.33", "must be a number >= 0"),
    ("protocol.budget.steps_per_task=0", "too small for one step"),
    ("protocol.budget.gmafs_per_task=0.001", "too small for one step"),
])
def test_bad_input_fails_in_one_line_before_any_run(override, message, store):
    cfg = config("cpt_finetune", override, store=store)
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    with pytest.raises(ConfigError, match=message) as err:
        cp.run(cfg, tracker)
    assert "\n" not in str(err.value)
    assert not tracker.client.search_runs([tracker.experiment_id])


def test_a_method_on_a_backbone_without_text_tower_is_refused(store):
    cfg = config("locked_text", "backbone=tiny_vit", store=store)
    with pytest.raises(ConfigError, match="text tower"):
        cp.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))


class Crash(RuntimeError):
    pass


RESUME = {"ema_merge": (), "cpt_migu": (), "cpt_hft": (), "cpt_si": (),
          "cpt_ewc": ("method.fisher_samples=16",)}  # EWC: one Fisher batch, so the 4-step budget leaves a step


@pytest.mark.parametrize("name", sorted(RESUME))
def test_kill_and_resume_gives_identical_metrics(name, store, monkeypatch):
    cfg = config(name, *RESUME[name], store=store)
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    original = cp.PretrainingLoop.experience

    def crash_at_2(self, method, stream, i, partial, device):
        if i == 2:
            raise Crash("crash before task 2")
        return original(self, method, stream, i, partial, device)

    monkeypatch.setattr(cp.PretrainingLoop, "experience", crash_at_2)
    with pytest.raises(Crash):
        cp.run(cfg, tracker)
    monkeypatch.undo()
    (failed,) = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = '{KIND_SEED}'")
    assert "crash before task 2" in failed.data.tags[FAILURE_TAG]
    trained = []
    monkeypatch.setattr(cp.PretrainingLoop, "experience",
                        lambda self, m, s, i, *a: trained.append(i) or original(self, m, s, i, *a))
    resumed = cp.run(cfg, tracker)
    monkeypatch.undo()
    assert trained == [2]  # the zero-shot point and task 1 came from the checkpoint
    reference, _ = run_untracked(name, *RESUME[name])
    got = resumed["seeds"][0].metrics
    for key in ("A_KA", "A_ZS", "gmean", "A_KA_zero_shot", "budget.steps_per_task"):
        assert got[key] == pytest.approx(reference[key], abs=1e-12), key
    table = tracker.read_text(resumed["run_id"], "summary.json")
    assert "gmean" in table
    seed_run = resumed["seeds"][0].run_id
    assert tracker.read_text(seed_run, DATASET_TASK_ARTIFACT).startswith("task,")
