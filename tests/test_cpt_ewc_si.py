"""cpt_ewc and cpt_si in protocol=continual_pretraining on the embedded digits FiF (spec fomo_in_flux.md sections
5-6): both learn, their penalties pull the weights toward the previous task's more than finetune, the budget
charges EWC's Fisher once per task and both methods' state, and bad hyperparameters fail in one line."""

from __future__ import annotations

import functools
import math
import signal
import sys

import pytest
import torch
from test_continual_pretraining import config

from fluxbench.cli import main
from fluxbench.errors import ConfigError
from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.methods import create_method
from fluxbench.methods.registry import get_method, validate_hyperparameters
from fluxbench.protocols import continual_pretraining as cp
from fluxbench.protocols.cpt.mixture import sub_batch_sizes
from fluxbench.protocols.cpt.pools import MixedBatches
from fluxbench.protocols.cpt.step import batch_tensors, train_task

STEPS = 6  # per task, driven directly (no budget), so that finetune, EWC and SI take the same steps
# the importances of 6 toy steps are tiny (Fisher ~1e-4, SI's omega / (delta^2 + 1) ~1e-8): strengths that make
# the pull visible against the contrastive gradient
PULL = {"cpt_finetune": (), "cpt_ewc": ("method.ewc_lambda=1e6", "method.fisher_samples=32"),
        "cpt_si": ("method.si_c=1e9",)}


@functools.cache
def two_tasks(name: str) -> dict:
    """Two tasks of ``STEPS`` steps: weights before and after each, the importance and anchor after task 1, and
    the contrastive loss on 128 random samples of each task's update pool before and after its task."""
    cfg = config(name, *PULL[name])
    opts, deviation = cp.options(cfg, True)
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    loop = cp.PretrainingLoop(cfg, bench, opts, None, deviation)
    torch.manual_seed(0)
    stream = loop.stream(0)
    ctx = loop.context(stream)
    method = create_method(cfg["method"], ctx)
    out = {"weights": [[p.detach().clone() for p in method.model.parameters()]], "losses": []}
    for task in range(2):
        pools = loop._task_pools(method, stream, task)
        pick = torch.randperm(len(pools["update"]), generator=torch.Generator().manual_seed(1))[:128]
        images, tokens = batch_tensors({"update": pools["update"].take(pick)}, ctx.device)
        with torch.no_grad():
            before = float(method.contrastive_loss(images, tokens))
        sizes = sub_batch_sizes(16, opts["data_mixture"], [p for p, v in pools.items() if v is not None and len(v)])
        train_task(method, MixedBatches(pools, sizes, 0, task), STEPS, task, opts, ctx.device, False)
        with torch.no_grad():
            out["losses"].append((before, float(method.contrastive_loss(images, tokens))))
        out["weights"].append([p.detach().clone() for p in method.model.parameters()])
        if task == 0 and name != "cpt_finetune":
            out["importance"] = [w.clone() for w in method.tensors("importance")]
            out["anchor"] = [a.clone() for a in method.tensors("anchor")]
    return out


def weighted_move(weights: list[list[torch.Tensor]], importance: list[torch.Tensor]) -> float:
    """sum F (theta_2 - theta_1)^2: how far task 2 moved the weights that mattered for task 1."""
    return float(sum((w * (b - a).pow(2)).sum() for w, a, b in zip(importance, weights[1], weights[2])))


@pytest.mark.parametrize("name", ["cpt_ewc", "cpt_si"])
def test_the_penalty_pulls_toward_the_previous_task_more_than_finetune_and_both_learn(name):
    ft, reg = two_tasks("cpt_finetune"), two_tasks(name)
    # task 1: zero importances, a zero pull: the very same weights as finetune
    assert all(torch.equal(a, b) for a, b in zip(ft["weights"][1], reg["weights"][1]))
    assert all(torch.equal(a, w) for a, w in zip(reg["anchor"], reg["weights"][1]))  # theta* = end of task 1
    importance = reg["importance"]
    assert min(float(w.min()) for w in importance) >= 0
    # positive somewhere in (almost) every tensor; within the token embedding only on the rows of seen tokens
    assert sum(bool((w > 0).any()) for w in importance) >= 0.9 * len(importance)
    assert weighted_move(reg["weights"], importance) < 0.5 * weighted_move(ft["weights"], importance)
    plain = [sum(float((b - a).pow(2).sum()) for a, b in zip(r["weights"][1], r["weights"][2])) for r in (ft, reg)]
    assert plain[1] < plain[0]
    for before, after in reg["losses"]:  # it still learns each task's pairs, the pulled second task included
        assert after < before - 0.1
    assert reg["losses"][1][1] > ft["losses"][1][1]  # ... less than unconstrained fine-tuning


def test_budget_charges_the_fisher_once_per_task_and_the_penalty_state_every_step():
    budgets = {}
    for name, extra in (("cpt_finetune", ()), ("cpt_ewc", ("method.fisher_samples=24",)), ("cpt_si", ())):
        cfg = config(name, "protocol.budget.steps_per_task=8", *extra)
        opts, _ = cp.options(cfg, True)
        budgets[name] = cp.measure_budget(cfg, open_benchmark(cfg["benchmark"], cfg["data_root"]), opts)
    ft, ewc, si = budgets["cpt_finetune"], budgets["cpt_ewc"], budgets["cpt_si"]
    assert ft.steps_per_task == 8 and ft.end_task_batches == 0 and ft.end_task_gmafs == 0
    n = sum(p.numel() for p in cp.method_context(config("cpt_ewc"), 40).build_backbone().parameters())
    # the penalty's elementwise FLOPs are declared (FlopCounterMode counts products only); SI adds its path integral
    assert ewc.gflops_per_step == pytest.approx(ft.gflops_per_step + 8 * n / 1e9)
    assert si.gflops_per_step == pytest.approx(ft.gflops_per_step + 11 * n / 1e9)
    # anchor + Fisher (EWC), + SI's path integral and pre-step weights: more memory than finetune's step
    assert 1 < ewc.memory_multiplier < si.memory_multiplier
    # EWC's Fisher: 24 samples at B=16 = 2 forward + backward passes, charged once, at EWC's memory multiplier
    assert ewc.end_task_batches == 2
    fisher = (2 * ft.gflops_per_step + 7 * n / 1e9) * ewc.memory_multiplier
    assert ewc.end_task_gmafs == pytest.approx(fisher)
    for b in (ewc, si):
        assert b.budget_gmafs_per_task == pytest.approx(ft.budget_gmafs_per_task)
        assert b.steps_per_task == math.floor((b.budget_gmafs_per_task - b.end_task_gmafs) / b.mafs_per_step)
    assert ewc.steps_per_task < si.steps_per_task < ft.steps_per_task
    assert {"budget.end_task_batches", "budget.end_task_gmafs"} <= set(ewc.metrics())


@pytest.mark.parametrize("name, override, message", [
    ("cpt_ewc", "method.ewc_lambda=-1", "method.ewc_lambda must be in [0, inf); got -1"),
    ("cpt_ewc", "method.fisher_samples=0", "method.fisher_samples must be in [1, inf); got 0"),
    ("cpt_si", "method.xi=-0.5", "method.xi must be in (0, inf); got -0.5"),
    ("cpt_si", "method.si_c=-2", "method.si_c must be in [0, inf); got -2"),
])
def test_bad_hyperparameters_fail_in_one_line(name, override, message):
    with pytest.raises(ConfigError) as err:
        validate_hyperparameters(config(name, override)["method"])
    assert str(err.value) == message


def test_the_command_line_exits_non_zero_on_a_negative_damping(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # the run installs its own
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "protocol=continual_pretraining", "method=cpt_si", "method.xi=-1", "progress=false"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fluxbench: error: method.xi must be in (0, inf); got -1"]
    assert not (tmp_path / "mlflow.db").exists()


def test_fluxbench_methods_lists_both_with_the_spec_defaults(capsys):
    assert get_method("cpt_ewc").kind == get_method("cpt_si").kind == "pretraining"
    main(["methods", "cpt_*"])
    out = capsys.readouterr().out
    assert "cpt_ewc  (fluxbench.methods.cpt_ewc_si)" in out and "cpt_si  (fluxbench.methods.cpt_ewc_si)" in out
    assert "ewc_lambda=1.0, gamma=1.0, fisher_samples=50000" in out
    assert "si_c=0.5, xi=1.0" in out
