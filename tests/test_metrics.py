import math

import numpy as np
import pytest

from fluxbench.protocols import metrics

# After task 0: 0.9 on exp 0. After task 1: 0.6 / 0.8. After task 2: 0.5 / 0.7 / 0.9.
R = np.array([[0.9, np.nan, np.nan], [0.6, 0.8, np.nan], [0.5, 0.7, 0.9]])


def test_step_and_last_accuracy_unweighted():
    np.testing.assert_allclose(metrics.step_accuracies(R), [0.9, 0.7, 0.7])
    assert metrics.last_accuracy(R) == pytest.approx(0.7)
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 0.7) / 3)


def test_step_accuracy_weights_by_test_size():
    # 100 samples in exp 0, 300 in exp 1: after task 1, (0.6*100 + 0.8*300) / 400 = 0.75
    assert metrics.step_accuracies(R, [100, 300, 100])[1] == pytest.approx(0.75)


def test_forgetting_3x3_by_hand():
    # exp 0: best earlier 0.9 (rows 0..1) - final 0.5 = 0.4 ; exp 1: best 0.8 - 0.7 = 0.1 ; mean 0.25
    assert metrics.forgetting(R) == pytest.approx(0.25)


def test_forgetting_uses_the_best_earlier_value_not_the_first():
    R2 = np.array([[0.5, np.nan, np.nan], [0.9, 0.8, np.nan], [0.6, 0.8, 0.9]])
    assert metrics.forgetting(R2) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)


def test_bwt_3x3_by_hand():
    # (0.5 - 0.9) + (0.7 - 0.8) = -0.5 ; / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_fwt_needs_future_entries_and_a_baseline():
    assert math.isnan(metrics.forward_transfer(R, [0.1, 0.1, 0.1]))
    full = np.array([[0.9, 0.3, 0.2], [0.6, 0.8, 0.4], [0.5, 0.7, 0.9]])
    # (0.3 - 0.1) + (0.4 - 0.2) = 0.4 ; / 2
    assert metrics.forward_transfer(full, [0.0, 0.1, 0.2]) == pytest.approx(0.2)


def test_single_experience_has_no_forgetting():
    assert metrics.forgetting(np.array([[0.7]])) == 0.0
    assert metrics.backward_transfer(np.array([[0.7]])) == 0.0


def test_mean_std_ci_matches_student_t():
    out = metrics.mean_std_ci([0.7, 0.8, 0.9])
    assert out["mean"] == pytest.approx(0.8)
    assert out["std"] == pytest.approx(0.1)
    # t(0.975, df=2) = 4.302652729911275
    assert out["ci95"] == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert out["n"] == 3


def test_mean_std_ci_single_value_has_no_interval():
    out = metrics.mean_std_ci([0.5])
    assert out["mean"] == 0.5 and out["std"] == 0.0 and math.isnan(out["ci95"])
