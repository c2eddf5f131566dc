from __future__ import annotations

import math

import numpy as np
import pytest

from auditor.metrics import (
    AttributionMetrics,
    balanced_accuracy_threshold,
    evaluate,
    roc_auc,
    threshold_at_fpr,
)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # 3 of 4 (positive, negative) pairs ordered
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts one half
        ([1, 0, 0, 0], [0.2, 0.1, 0.3, 0.4], 1 / 3),
    ],
)
def test_roc_auc_known_values(labels: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))


@pytest.mark.parametrize(
    ("labels", "scores"),
    [([0, 1], [0.1]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, math.nan]), ([[0, 1]], [[0.1, 0.2]])],
)
def test_roc_auc_rejects_bad_input(labels: list, scores: list) -> None:
    with pytest.raises(ValueError):
        roc_auc(labels, scores)


def test_threshold_at_fpr_is_conservative_with_few_negatives() -> None:
    # 3 negatives cannot show a 10% FPR: the only rate <= 0.1 they allow is 0.
    assert threshold_at_fpr([0.2, 0.7, 0.4], 0.1) == 0.7
    assert threshold_at_fpr([0.2, 0.7, 0.4], 0.0) == 0.7


def test_threshold_at_fpr_allows_floor_fpr_n_negatives_above() -> None:
    negatives = np.arange(10.0)  # 0..9
    assert threshold_at_fpr(negatives, 0.1) == 8.0  # only 9 lies above
    assert threshold_at_fpr(negatives, 0.19) == 8.0
    assert threshold_at_fpr(negatives, 0.2) == 7.0
    assert threshold_at_fpr(negatives, 0.5) == 4.0
    # 0.29 * 100 = 28.999999999999996 in floating point: 29 negatives may still lie above.
    assert threshold_at_fpr(np.arange(100.0), 0.29) == 70.0


def test_threshold_at_fpr_with_ties_never_exceeds_the_rate() -> None:
    # Three tied maxima: no threshold lets exactly one of four through, so none may pass.
    assert threshold_at_fpr([1.0, 1.0, 1.0, 0.0], 0.25) == 1.0
    assert threshold_at_fpr([1.0, 1.0, 1.0, 0.0], 0.75) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_threshold_at_fpr_is_the_smallest_valid_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    negatives = rng.normal(size=int(rng.integers(1, 200)))
    for fpr in (0.0, 0.01, 0.05, 0.1, 0.33, 0.9):
        t = threshold_at_fpr(negatives, fpr)
        assert np.mean(negatives > t) <= fpr
        # anything lower lets the threshold value itself through and exceeds the rate
        assert np.mean(negatives > np.nextafter(t, -np.inf)) > fpr


@pytest.mark.parametrize(("negatives", "fpr"), [([], 0.1), ([0.1], 1.0), ([0.1], -0.1), ([0.1], math.nan)])
def test_threshold_at_fpr_rejects_bad_arguments(negatives: list[float], fpr: float) -> None:
    with pytest.raises(ValueError):
        threshold_at_fpr(negatives, fpr)


def test_balanced_accuracy_threshold_is_the_separating_midpoint() -> None:
    assert balanced_accuracy_threshold([0, 0, 1, 1], [0.0, 0.1, 0.5, 0.6]) == pytest.approx(0.3)


def test_balanced_accuracy_threshold_weighs_classes_equally() -> None:
    # Calling everything innocent is as accurate (9/10) as catching the one infringing
    # model; balanced accuracy gives that model equal weight, so the threshold catches it.
    labels = [0] * 9 + [1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95, 0.9]
    t = balanced_accuracy_threshold(labels, scores)
    assert t == pytest.approx(0.85)


def test_balanced_accuracy_threshold_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        balanced_accuracy_threshold([0, 0], [0.1, 0.2])


def _calibration() -> tuple[list[int], list[float]]:
    return [0, 0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]


def test_evaluate_fixes_thresholds_on_calibration_not_test() -> None:
    cal_y, cal_s = _calibration()
    # On the test split alone a threshold of 0.6 would separate perfectly and a 10%-FPR
    # threshold would be 0.55; the calibration split fixes 0.5 and 0.4 instead.
    test_y, test_s = [0, 0, 1, 1], [0.55, 0.1, 0.65, 0.9]
    result = evaluate(cal_y, cal_s, test_y, test_s)
    assert isinstance(result, AttributionMetrics)
    assert result.decision_threshold == pytest.approx(0.5)
    assert result.accuracy == pytest.approx(0.75)  # 0.55 is a false positive at 0.5
    assert result.threshold_10_fpr == 0.4  # 4 calibration negatives: the max
    assert result.threshold_1_fpr == 0.4
    assert result.fpr_at_10_threshold == pytest.approx(0.5)  # held-out FPR honestly above 10%
    assert result.tpr_at_10_fpr == 1.0
    assert result.tpr_at_1_fpr == 1.0
    assert result.auc == pytest.approx(1.0)
    assert (result.n_positive, result.n_negative) == (2, 2)


def test_evaluate_thresholds_do_not_depend_on_the_test_split() -> None:
    cal_y, cal_s = _calibration()
    a = evaluate(cal_y, cal_s, [0, 1], [0.0, 1.0])
    b = evaluate(cal_y, cal_s, [0, 0, 1, 1, 1], [0.45, 0.58, 0.42, 0.3, 0.99])
    for field in ("decision_threshold", "threshold_10_fpr", "threshold_1_fpr"):
        assert getattr(a, field) == getattr(b, field)
    assert b.accuracy == pytest.approx(2 / 5)
    assert b.tpr_at_10_fpr == pytest.approx(2 / 3)
    assert b.fpr_at_10_threshold == pytest.approx(1.0)


def test_evaluate_uses_a_given_decision_threshold() -> None:
    cal_y, cal_s = _calibration()
    result = evaluate(cal_y, cal_s, [0, 1, 1], [0.2, 0.3, 0.9], decision_threshold=0.25)
    assert result.decision_threshold == 0.25
    assert result.accuracy == 1.0


def test_evaluate_reports_nan_for_undefined_rates() -> None:
    cal_y, cal_s = _calibration()
    result = evaluate(cal_y, cal_s, [0, 0], [0.1, 0.9])
    assert math.isnan(result.auc)
    assert math.isnan(result.tpr_at_10_fpr)
    assert result.fpr_at_10_threshold == 0.5
    assert (result.n_positive, result.n_negative) == (0, 2)


def test_evaluate_1_fpr_threshold_uses_more_negatives_when_available() -> None:
    rng = np.random.default_rng(0)
    negatives = rng.uniform(0.0, 1.0, size=200)
    cal_y = np.r_[np.zeros(200), np.ones(5)]
    cal_s = np.r_[negatives, np.full(5, 2.0)]
    result = evaluate(cal_y, cal_s, [0, 1], [0.5, 1.5])
    descending = np.sort(negatives)[::-1]
    assert result.threshold_10_fpr == descending[20]
    assert result.threshold_1_fpr == descending[2]


@pytest.mark.parametrize(
    ("cal_y", "cal_s", "test_y", "test_s", "message"),
    [
        ([0, 1], [0.1], [0, 1], [0.1, 0.2], "same length"),
        ([0, 1], [0.1, 0.2], [0, 1], [0.1], "same length"),
        ([0, 3], [0.1, 0.2], [0, 1], [0.1, 0.2], "only 0"),
        ([1, 1], [0.1, 0.2], [0, 1], [0.1, 0.2], "no innocent"),
        ([0, 1], [0.1, math.inf], [0, 1], [0.1, 0.2], "finite"),
        ([0, 1], [0.1, 0.2], [], [], "empty"),
    ],
)
def test_evaluate_rejects_bad_input(cal_y, cal_s, test_y, test_s, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(cal_y, cal_s, test_y, test_s)


def test_evaluate_rejects_non_finite_decision_threshold() -> None:
    cal_y, cal_s = _calibration()
    with pytest.raises(ValueError, match="decision_threshold"):
        evaluate(cal_y, cal_s, [0, 1], [0.1, 0.9], decision_threshold=math.nan)
