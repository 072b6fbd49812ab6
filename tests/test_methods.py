"""Every registered method, through one parametrized test (a new method is tested without a new test)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import compose_config

from fluxbench.methods import create_method, list_methods
from fluxbench.methods.registry import get_method, method_config
from fluxbench.protocols.execution import train_and_evaluate
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything


def short_overrides(name: str) -> list[str]:
    """Keep each method's own defaults, but cap epochs so the whole registry runs in seconds."""
    cfg = method_config(name)
    return [f"method.epochs={min(cfg['epochs'], 5)}"] if "epochs" in cfg else []


@cache
def run_supervised(name: str, *overrides: str) -> tuple[np.ndarray, list[int]]:
    cfg = compose_config(f"method={name}", *short_overrides(name), *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    ctx = method_context(cfg, num_classes=10)
    method = create_method(cfg["method"], ctx)
    R = train_and_evaluate(method, stream, ctx.device)
    x, _ = stream[0].tensors("test")
    # the predict contract: scores over every class of the stream; the protocol masks to the seen ones
    assert method.predict(x[:7]).shape == (7, ctx.num_classes)
    return R, [len(e.test) for e in stream]


# test-time methods have their own parametrized test on digits-C (tests/test_tta_methods.py)
@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).kind == "supervised"])
def test_every_method_learns_the_digits_stream(name):
    R, sizes = run_supervised(name)
    assert R.shape == (5, 5)
    assert np.isnan(R[np.triu_indices(5, 1)]).all(), "class-incremental streams evaluate seen experiences only"
    # right after learning an experience, its two classes are well above chance among those seen
    assert np.nanmean(np.diag(R)) > 0.6
    # at the end, above chance (1/10) on everything seen
    assert summarize_matrix(R, sizes)["last_accuracy"] > 0.15


def test_joint_beats_finetune_on_last_accuracy():
    joint = summarize_matrix(*run_supervised("joint"))["last_accuracy"]
    finetune = summarize_matrix(*run_supervised("finetune"))["last_accuracy"]
    assert joint > finetune + 0.3


@pytest.mark.parametrize("name", ["ewc", "lwf", "replay"])
def test_cl_baselines_forget_less_than_finetune(name):
    finetune = summarize_matrix(*run_supervised("finetune"))["forgetting"]
    assert summarize_matrix(*run_supervised(name))["forgetting"] < finetune - 0.05


def test_prototype_never_changes_old_prototypes():
    cfg = compose_config("method=prototype")
    split = load_split(cfg, "evaluation")
    stream = build_stream(cfg, split, seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes=10))
    method.train_experience(stream[0])
    first = method.prototypes[:2].clone()
    method.train_experience(stream[1])
    assert np.allclose(first.numpy(), method.prototypes[:2].numpy())
    assert method.prototypes[2:4].abs().sum() > 0 and (method.prototypes[4:] == 0).all()  # only seen classes


def test_state_dict_round_trip_gives_the_same_predictions():
    cfg = compose_config("method=finetune", "method.epochs=1")
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    ctx = method_context(cfg, num_classes=10)
    a = create_method(cfg["method"], ctx)
    a.train_experience(stream[0])
    b = create_method(cfg["method"], ctx)
    b.load_state_dict(a.state_dict())
    x, _ = stream[0].tensors("test")
    assert np.array_equal(a.predict(x).numpy(), b.predict(x).numpy())
