from __future__ import annotations

import math

import pytest
from scipy import stats

from auditor.calibration import (
    binomial_pvalue,
    decide,
    empirical_pvalue,
    estimate_null_rate,
    min_achievable_pvalue,
    min_empirical_pvalue,
)


@pytest.mark.parametrize("trials", [1, 5, 20, 50, 200])
@pytest.mark.parametrize("p0", [0.001, 0.02, 0.1, 0.37, 0.9])
def test_binomial_pvalue_matches_scipy_binomtest(trials: int, p0: float) -> None:
    for hits in sorted({0, 1, trials // 3, trials // 2, trials - 1, trials}):
        if hits < 0:
            continue
        expected = stats.binomtest(hits, trials, p0, alternative="greater").pvalue
        assert binomial_pvalue(hits, trials, p0) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_binomial_pvalue_is_monotone_in_hits() -> None:
    values = [binomial_pvalue(hits, 60, 0.05) for hits in range(61)]
    assert values[0] == 1.0
    assert all(later <= earlier for earlier, later in zip(values[:-1], values[1:], strict=True))
    assert values[-1] == pytest.approx(0.05**60, rel=1e-9)


@pytest.mark.parametrize(
    ("hits", "trials", "p0"),
    [(-1, 5, 0.1), (6, 5, 0.1), (1, 5, -0.1), (1, 5, 1.5), (1, 5, math.nan), (1.5, 5, 0.1)],
)
def test_binomial_pvalue_rejects_bad_arguments(hits: int, trials: int, p0: float) -> None:
    with pytest.raises(ValueError):
        binomial_pvalue(hits, trials, p0)


def test_null_rate_is_never_zero() -> None:
    rate = estimate_null_rate([0, 0, 0], trials=50)
    assert rate > 0
    assert rate == pytest.approx(0.5 / 151)
    assert estimate_null_rate([0], trials=0) == pytest.approx(0.5)
    assert estimate_null_rate([50, 50], trials=50) < 1
    assert estimate_null_rate([2, 4], trials=10) == pytest.approx(6.5 / 21)


def test_null_rate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        estimate_null_rate([], trials=10)
    with pytest.raises(ValueError):
        estimate_null_rate([11], trials=10)
    with pytest.raises(ValueError):
        estimate_null_rate([1], trials=10, prior=(0.0, 1.0))


def test_empirical_pvalue() -> None:
    assert empirical_pvalue(5.0, []) == 1.0
    assert empirical_pvalue(10.0, [1.0, 2.0, 3.0]) == pytest.approx(1 / 4)
    assert empirical_pvalue(2.0, [1.0, 2.0, 3.0]) == pytest.approx(3 / 4)
    assert empirical_pvalue(0.0, [1.0, 2.0, 3.0]) == 1.0
    with pytest.raises(ValueError):
        empirical_pvalue(math.nan, [1.0])


def test_minimum_pvalues() -> None:
    assert min_achievable_pvalue(3, 0.1) == pytest.approx(1e-3)
    assert min_achievable_pvalue(40, 0.05) == pytest.approx(binomial_pvalue(40, 40, 0.05))
    assert min_empirical_pvalue(99) == pytest.approx(0.01)
    assert min_empirical_pvalue(0) == 1.0


def test_decide_infringing() -> None:
    result = decide(hits=20, trials=50, reference_hits=[1, 0, 2, 1, 0], alpha=0.01)
    assert result.verdict == "infringing"
    assert result.p_value is not None and result.p_value <= 0.01
    assert result.p0 == pytest.approx(4.5 / 251)
    assert result.n_references == 5
    assert result.empirical_p_value is None  # 5 references can never reach alpha = 0.01


def test_decide_not_infringing() -> None:
    result = decide(hits=2, trials=50, reference_hits=[1, 0, 2, 1, 3], alpha=0.01)
    assert result.verdict == "not_infringing"
    assert result.p_value is not None and result.p_value > 0.01
    assert "no significant evidence" in result.reason


def test_decide_without_references_is_inconclusive() -> None:
    result = decide(hits=50, trials=50, reference_hits=[])
    assert result.verdict == "inconclusive"
    assert result.p_value is None and result.p0 is None
    assert "reference" in result.reason


def test_decide_with_too_few_keys_is_inconclusive() -> None:
    # one reference with 0/2 hits: p0 = 0.5 / 3, so even 2/2 hits give p = p0**2 > 0.01.
    result = decide(hits=2, trials=2, reference_hits=[0], alpha=0.01)
    assert result.verdict == "inconclusive"
    assert "no result can reach alpha" in result.reason
    assert min_achievable_pvalue(2, result.p0) > 0.01


def test_decide_reports_empirical_pvalue_with_enough_references() -> None:
    references = [i % 3 for i in range(99)]
    result = decide(hits=30, trials=50, reference_hits=references, alpha=0.01)
    assert result.verdict == "infringing"
    assert result.empirical_p_value == pytest.approx(0.01)
    assert decide(hits=30, trials=50, reference_hits=references[:98], alpha=0.01).empirical_p_value is None


def test_decide_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError):
        decide(1, 10, [0], alpha=0.0)
    with pytest.raises(ValueError):
        decide(11, 10, [0])
