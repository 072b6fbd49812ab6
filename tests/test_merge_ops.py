"""The merge operators of the continual-pretraining merges (fluxbench.methods.merge_ops) on hand-computed state
dicts, and what ZS-Merge and FT-Merge train from and score after a task."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method
from fluxbench.methods.merge_ops import interpolation, merge, task_arithmetic, ties
from fluxbench.protocols import continual_pretraining as cp
from fluxbench.protocols import with_protocol_defaults


def sd(x: list[float], y: list[list[float]]) -> dict[str, torch.Tensor]:
    f = torch.float32
    return {"x": torch.tensor(x, dtype=f), "y": torch.tensor(y, dtype=f), "mask": torch.tensor([float("-inf"), 0.0])}


KEYS = ["x", "y"]  # "mask" stands for a buffer: never merged


def test_interpolation_weights_the_new_model():
    a, b = sd([1, 2], [[0, 4]]), sd([3, 6], [[4, 0]])
    got = interpolation([a, b], [0.25, 0.75], KEYS)
    assert got["x"].tolist() == [2.5, 5.0] and got["y"].tolist() == [[3.0, 1.0]] and "mask" not in got
    assert merge("interpolation", [a, b], a, KEYS, weight=0.5, prune=0.7, scaling=1.0)["x"].tolist() == [2, 4]


def test_task_arithmetic_adds_the_scaled_task_vectors_to_the_zero_shot_weights():
    zero = sd([1, 1], [[1]])
    a, b = sd([2, 0], [[1]]), sd([1, 3], [[1]])  # tau_a = (1, -1, 0), tau_b = (0, 2, 0)
    assert task_arithmetic([a, b], zero, KEYS)["x"].tolist() == [2.0, 2.0]
    got = task_arithmetic([a, b], zero, KEYS, scaling=0.5)
    assert got["x"].tolist() == [1.5, 1.5] and got["y"].tolist() == [[1.0]]


def test_ties_trims_elects_the_sign_and_takes_the_disjoint_mean_over_the_whole_model():
    zero = sd([1, 1], [[1, 1], [1, 1]])
    tau1 = [3, -1, 0.5, 2, -4, 0.1]
    tau2 = [-2, 2, 0.2, 1, -1, -3]

    def model(tau: list[float]) -> dict[str, torch.Tensor]:
        t = [1 + v for v in tau]
        return sd(t[:2], [t[2:4], t[4:]])

    # prune 0.5 of 6 entries: k = 3, kept |tau| >= the 3rd smallest (1 in both), i.e.
    #   tau1 -> (3, -1, 0, 2, -4, 0), tau2 -> (-2, 2, 0, 1, -1, -3); sum (1, 1, 0, 3, -5, -3)
    # elected signs (+, +, 0 -> sign of the total = +, +, -, -); agreeing entries averaged:
    #   (3, 2, 0 [none agrees], (2+1)/2, (-4-1)/2, -3)
    got = ties([model(tau1), model(tau2)], zero, KEYS, prune=0.5)
    assert got["x"].tolist() == [4.0, 3.0]
    assert got["y"].tolist() == [[1.0, 2.5], [-1.5, -2.0]]
    scaled = ties([model(tau1), model(tau2)], zero, KEYS, prune=0.5, scaling=2.0)
    assert scaled["x"].tolist() == [7.0, 5.0]
    untrimmed = ties([model(tau1), model(tau2)], zero, KEYS, prune=0.0)  # k = 0: nothing trimmed
    assert untrimmed["y"].tolist()[0] == pytest.approx([1 + (0.5 + 0.2) / 2, 1 + 1.5])


def test_an_unknown_operator_is_a_config_error():
    with pytest.raises(ConfigError, match="merge_op"):
        merge("slerp", [sd([1, 1], [[1]])] * 2, sd([1, 1], [[1]]), KEYS, weight=0.5, prune=0.7, scaling=1.0)


def method(name: str, *extra: str):
    cfg = compose_config(*with_protocol_defaults(["protocol=continual_pretraining", f"method={name}", *extra]))
    return create_method(cfg["method"], cp.method_context(cfg, 40))


@torch.no_grad()
def shifted(m, delta: float) -> None:
    for p in m.model.parameters():
        p.add_(delta)


def params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_zs_merge_trains_from_the_zero_shot_weights_and_scores_the_unrolled_merge():
    m = method("zs_merge")
    theta0 = params(m.model).clone()
    shifted(m, 1.0)
    m.end_task(0)
    assert torch.equal(params(m.model), theta0)  # the next task starts from theta_0 again
    assert torch.allclose(params(m.evaluation_model()), theta0 + 0.5)
    shifted(m, 1.0)
    m.end_task(1)  # 0.5 * theta_2 + 0.5 * merged_1: the older task weighs less
    assert torch.allclose(params(m.evaluation_model()), theta0 + 0.75)


def test_ft_merge_interpolates_with_the_zero_shot_weights_and_trains_from_the_merge():
    m = method("ft_merge", "method.merge_weight=0.25")
    theta0 = params(m.model).clone()
    shifted(m, 1.0)
    m.end_task(0)
    assert torch.allclose(params(m.model), theta0 + 0.25) and m.evaluation_model() is m.model


def test_ema_merge_with_task_arithmetic_keeps_both_task_vectors():
    m = method("ema_merge", "method.merge_op=task_arithmetic")
    theta0 = params(m.model).clone()
    shifted(m, 1.0)
    m.end_task(0)  # theta_0 + (theta_1 - theta_0) + (merged_0 - theta_0) = theta_1
    assert torch.allclose(params(m.model), theta0 + 1.0)
    shifted(m, 1.0)
    m.end_task(1)  # theta_0 + (2) + (1)
    assert torch.allclose(params(m.model), theta0 + 3.0)
