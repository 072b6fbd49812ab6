"""The learning-rate schedules of protocol=continual_pretraining (spec fomo_in_flux.md section 6): values at the
warm-up end, the cooldown start and end, and per-task restarts or meta-schedules across tasks."""

from __future__ import annotations

import math
import re

import pytest

from fluxbench.errors import ConfigError
from fluxbench.protocols.cpt.schedule import SCHEDULES, check_schedule, lr_at, recovery_peak

S, LR, LOW = 20, 1.0, 1e-3  # 20 steps per task: 2 warm-up steps, 2 cooldown steps at the 0.1 defaults


def curve(name: str, task: int, steps: int = S, **opts: float) -> list[float]:
    checked = check_schedule({"name": name, **opts})
    return [lr_at(s, steps, task, LR, checked) for s in range(steps)]


def test_the_named_options_are_the_spec_meta_schedules():
    assert set(SCHEDULES) == {"cosine_with_linear_warmup", "cosine_with_linear_warmup_and_recovery",
                              "cosine_with_linear_warmup_and_dynamic_recovery", "rsqrt", "constant"}
    assert check_schedule({}) == {"name": "cosine_with_linear_warmup", "warmup": 0.1, "min_factor": 1e-3,
                                  "cooldown": 0.1}


def test_cosine_warms_up_then_decays_and_restarts_every_task():
    lrs = curve("cosine_with_linear_warmup", 0)
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])  # warm-up end (step W - 1) and the cosine's top
    assert lrs[11] == pytest.approx(LOW + 0.5 * (LR - LOW) * (1 + math.cos(math.pi * 9 / 18)))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert curve("cosine_with_linear_warmup", 7) == lrs


def test_rsqrt_warms_up_decays_as_the_inverse_square_root_and_cools_down_to_zero():
    lrs = curve("rsqrt", 0)
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[8] == pytest.approx(LOW + math.sqrt(2 / 8) * (LR - LOW))  # half the peak at 4x the warm-up
    rsqrt_18 = LOW + math.sqrt(2 / 18) * (LR - LOW)
    assert lrs[17] == pytest.approx(LOW + math.sqrt(2 / 17) * (LR - LOW))  # the last step before the cooldown
    assert lrs[18:] == pytest.approx([rsqrt_18 / 2, 0.0])  # cooldown start (C - 1) / C, end 0
    assert curve("rsqrt", 3) == lrs  # restarted per task
    longer = curve("rsqrt", 0, cooldown=0.25)  # 5 cooldown steps: 15..19
    assert longer[14] == pytest.approx(LOW + math.sqrt(2 / 14) * (LR - LOW))
    assert longer[15] == pytest.approx((LOW + math.sqrt(2 / 15) * (LR - LOW)) * 4 / 5)
    assert longer[19] == 0.0


def test_autoregressive_recovery_lowers_each_task_peak_along_a_cosine_over_tasks():
    assert curve("cosine_with_linear_warmup_and_recovery", 0) == curve("cosine_with_linear_warmup", 0)
    peaks = [max(curve("cosine_with_linear_warmup_and_recovery", t)) for t in range(5)]
    assert peaks[0] == LR
    for t in range(1, 5):  # the spec's formula, with S - W = 18
        cosine = 0.5 * (1 + math.cos(math.pi * (t * 18 + 1) / ((t + 1) * 18)))
        assert peaks[t] == pytest.approx(LOW + cosine * (LR - LOW))
        assert peaks[t] < peaks[t - 1]
    lrs = curve("cosine_with_linear_warmup_and_recovery", 2)
    assert lrs[:2] == pytest.approx([peaks[2] / 2, peaks[2]])  # warm-up to the task's peak, restarted
    assert lrs[-1] == pytest.approx(LOW + 0.5 * (peaks[2] - LOW) * (1 + math.cos(math.pi * 17 / 18)))


def test_dynamic_recovery_continues_one_global_cosine_after_each_warm_up():
    name = "cosine_with_linear_warmup_and_dynamic_recovery"
    assert curve(name, 0) == curve("cosine_with_linear_warmup", 0)  # task 1: the plain schedule
    for t in (1, 3):
        lrs, total = curve(name, t), (t + 1) * S
        warm = round(0.1 * total)
        peak = recovery_peak(t, S, 2, LR, LOW)
        assert lrs[:2] == pytest.approx([peak / 2, peak])  # warm-up to the autoregressive peak
        for s in (2, 10, 19):  # the global cosine over (t + 1) S steps, at step t S + s
            assert lrs[s] == pytest.approx(LOW + 0.5 * (LR - LOW) * (1 + math.cos(math.pi * (t * S + s - warm)
                                                                                     / (total - warm))))
    assert curve(name, 3)[2] < curve(name, 1)[2] < LR  # later tasks start lower on the global curve


@pytest.mark.parametrize("opts, message", [
    ({"name": "linear"}, "rsqrt"),
    ({"name": "rsqrt", "cooldown": 1.0}, "cooldown must be in [0, 1)"),
    ({"name": "rsqrt", "cooldown": 0.5, "warmup": 0.6}, "warmup + cooldown <= 1"),
])
def test_bad_schedule_options_fail_in_one_line(opts, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        check_schedule(opts)
    assert "\n" not in str(err.value)
