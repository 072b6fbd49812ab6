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


def test_the_three_forgetting_definitions_differ_as_documented():
    # an experience that improves after it is learnt (backward transfer), then drops a little at the end
    R3 = np.array([[0.5, np.nan, np.nan], [0.9, 0.6, np.nan], [0.8, 0.7, 0.9]])
    chaudhry = ((0.9 - 0.8) + (0.6 - 0.7)) / 2  # best *earlier* minus final: exp 1 is negative (it improved)
    avalanche = ((0.5 - 0.8) + (0.6 - 0.7)) / 2  # first minus final: both negative
    pycil = ((0.9 - 0.8) + (0.7 - 0.7)) / 2  # best of all steps (final included) minus final: never below zero
    assert metrics.forgetting(R3) == pytest.approx(chaudhry) == pytest.approx(0.0)
    assert metrics.forgetting_first_minus_last(R3) == pytest.approx(avalanche) == pytest.approx(-0.2)
    assert metrics.forgetting_clipped(R3) == pytest.approx(pycil) == pytest.approx(0.05)
    assert metrics.forgetting_first_minus_last(R3) == pytest.approx(-metrics.backward_transfer(R3))
    summary = metrics.summarize_matrix(R3)
    assert (summary["forgetting"], summary["forgetting_first_last"], summary["forgetting_pycil"]) == pytest.approx(
        (chaudhry, avalanche, pycil))


def test_fwt_is_reported_only_where_it_is_defined():
    assert "fwt" not in metrics.summarize_matrix(R)  # class-incremental: nothing above the diagonal
    full = np.array([[0.9, 0.3, 0.2], [0.6, 0.8, 0.4], [0.5, 0.7, 0.9]])
    assert metrics.summarize_matrix(full, baseline=[0.0, 0.1, 0.2])["fwt"] == pytest.approx(0.2)


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
