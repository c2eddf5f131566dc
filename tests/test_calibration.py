"""The model-level test: its arithmetic, its refusals, and its false-positive rate on simulated nulls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from auditor import verdict_test
from auditor.calibration import (
    FLOOR,
    MODEL_TEST,
    leave_one_out,
    log_distances,
    model_statistics,
    model_test,
    normalize,
    pooled_scale,
    prediction_pvalue,
    sparse_keys,
)
from auditor.verdict_test import binomial_figure


def _seeds(d) -> np.ndarray:
    """Per-key distances as one seed per key, unless already keys x seeds."""
    d = np.asarray(d, dtype=float)
    return d[:, None] if d.ndim == 1 else d


def decide(suspect, refs, **kwargs):
    """This test's gates and verdict (per-key distances read as one seed per key)."""
    return verdict_test.decide(_seeds(suspect), [_seeds(r) for r in refs], test=MODEL_TEST, **kwargs)


M = 30


def innocent(rng, keys: np.ndarray, model_effect: float = 0.0, noise_sd: float = 0.18) -> np.ndarray:
    """One innocent model's per-key distances: key difficulty, a model-wide shift, noise, min of 4 seeds."""
    noise = rng.normal(0, noise_sd, size=(len(keys), 4))
    return np.exp(keys[:, None] + model_effect + noise).min(axis=1)


def world(seed: int, n: int, tau: float = 0.0, spread: float = 0.0):
    """Keys, and n innocent references differing by a model-wide shift (sd tau) and by how noisy
    each model is (its seed noise scaled by exp(N(0, spread)))."""
    rng = np.random.default_rng(seed)
    keys = rng.normal(math.log(0.25), 0.3, M)
    refs = [innocent(rng, keys, rng.normal(0, tau), 0.18 * math.exp(rng.normal(0, spread))) for _ in range(n)]
    return rng, keys, refs


# ---------------------------------------------------------------- arithmetic


def test_binomial_figure_matches_scipy_and_is_labelled():
    figure = binomial_figure(7, 30, [2, 3, 1, 0, 4])
    p0 = (10 + 0.5) / (5 * 30 + 1)
    assert figure.p0 == pytest.approx(p0)
    assert figure.p_value == pytest.approx(stats.binomtest(7, 30, p0, alternative="greater").pvalue, rel=1e-9)
    assert "not the verdict" in figure.assumption


def test_normalization_centers_each_key_and_pools_the_spread():
    refs = np.log(np.array([[0.2, 0.4, 0.3], [0.25, 0.5, 0.35], [0.3, 0.45, 0.25]]))
    mu = refs.mean(axis=0)
    s = math.sqrt(((refs - mu) ** 2).sum() / (3 * 2))
    assert pooled_scale(refs) == pytest.approx(s)
    x = np.log(np.array([0.1, 0.45, 0.3]))
    np.testing.assert_allclose(normalize(x, refs), (x - mu) / s)


def test_statistics_are_the_median_and_the_tail_asymmetry():
    z = np.array([-6.0, -5.0, 0.0, 0.1, 0.2, 0.3, -0.1, 0.05])
    global_, sparse = model_statistics(z)
    median = float(np.median(z))
    assert global_ == pytest.approx(-median)
    assert sparse_keys(8) == 2
    ordered = np.sort(z)
    low, high = median - ordered[:2].mean(), ordered[-2:].mean() - median
    assert sparse == pytest.approx(math.log((low + 0.1) / (high + 0.1)))
    # free of the model's own location and scale
    assert model_statistics(3 * z + 2)[1] == pytest.approx(math.log((3 * low + 0.1) / (3 * high + 0.1)))


def test_a_noisier_suspect_farther_on_every_key_is_not_called_closer():
    """A suspect whose keys spread more on both sides (another sampler, fp16), and which is farther
    than every reference on every key, must not be read as a sparse copy (a reviewer's case)."""
    rng, keys, refs = world(20, 8)
    noisy = np.exp(keys + 0.35 + rng.normal(0, 0.6, M))  # farther and noisier
    decision = decide(noisy, refs, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "not_infringing", decision.reason
    assert decision.test.p_values["sparse"] > 0.01


def test_references_that_are_one_model_several_times_are_inconclusive():
    rng, keys, refs = world(21, 1)
    seeds = np.exp(keys[:, None] + rng.normal(0, 0.18, size=(M, 4)))
    copies = [seeds * (1 + 1e-4 * rng.normal(size=seeds.shape)) for _ in range(5)]
    suspect = innocent(rng, keys)
    decision = decide(suspect, copies, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "inconclusive" and "one model several times" in decision.reason


def test_tiny_p_values_are_shown_as_a_bound():
    rng, keys, refs = world(22, 8)
    copier = rng.uniform(0.03, 0.05, M)
    decision = decide(copier, refs, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "infringing" and "p < 1e-06" in decision.reason


def test_scaling_every_distance_changes_nothing_and_a_suspect_wide_shift_moves_only_the_global_statistic():
    rng, keys, refs = world(0, 6)
    suspect = innocent(rng, keys)
    base = model_test(suspect, refs)
    scaled = model_test(suspect * 0.9, [r * 0.9 for r in refs])
    assert scaled.p_value == pytest.approx(base.p_value, rel=1e-9)
    shifted = model_test(suspect * 0.7, refs)
    assert shifted.statistics["sparse"] == pytest.approx(base.statistics["sparse"], rel=1e-9)
    assert shifted.statistics["global"] > base.statistics["global"] + 1


def test_leave_one_out_and_the_prediction_p_value():
    _, _, refs = world(1, 5)
    logs = np.stack([log_distances(r) for r in refs])
    null = leave_one_out(logs)
    assert null.shape == (5, 2)
    expected_first = model_statistics(normalize(logs[0], logs[1:]))
    np.testing.assert_allclose(null[0], expected_first)
    t, p = prediction_pvalue(2.0, np.array([0.0, 0.5, 1.0, 0.2]))
    sd = np.std([0.0, 0.5, 1.0, 0.2], ddof=1)
    assert t == pytest.approx((2.0 - 0.425) / (sd * math.sqrt(1.25)))
    assert p == pytest.approx(stats.t.sf(t, 3))


def test_distances_under_the_floor_count_as_the_floor():
    assert log_distances([0.0, FLOOR / 2, 0.5]).tolist() == pytest.approx(
        [math.log(FLOOR)] * 2 + [math.log(0.5)]
    )
    with pytest.raises(ValueError):
        log_distances([0.1, float("nan")])


# ---------------------------------------------------------------- verdicts


def test_a_copier_is_infringing_and_an_innocent_is_not():
    rng, keys, refs = world(2, 8)
    copier = innocent(rng, keys)
    copier[:8] = rng.uniform(0.04, 0.08, 8)  # a quarter of the keys reproduced closely
    decision = decide(copier, refs, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "infringing", decision.reason
    clean = decide(innocent(rng, keys), refs, alpha=0.01, min_references=5, delta0=0.15)
    assert clean.verdict == "not_infringing", clean.reason
    assert clean.binomial is not None and clean.test is not None


def test_too_few_references_is_inconclusive_with_the_reason():
    rng, keys, refs = world(3, 4)
    copier = rng.uniform(0.04, 0.08, M)
    decision = decide(copier, refs, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "inconclusive"
    assert "4 innocent reference models" in decision.reason and "at least 5" in decision.reason
    assert decide(copier, [], alpha=0.01, min_references=5, delta0=0.15).test is None


def test_an_audit_without_power_is_inconclusive():
    rng, keys, refs = world(4, 5)
    decision = decide(rng.uniform(0.04, 0.08, M), refs, alpha=1e-40, min_references=5, delta0=0.15)
    assert decision.verdict == "inconclusive" and "audit without power" in decision.reason
    assert decision.test.min_p_value > 1e-40


def test_identical_references_are_inconclusive():
    _, _, refs = world(5, 5)
    decision = decide(refs[0], [refs[0]] * 5, alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "inconclusive" and "do not vary" in decision.reason


def test_a_reference_that_looks_infringing_is_caught():
    rng, keys, refs = world(6, 8)
    contaminated = innocent(rng, keys)
    contaminated[:] = rng.uniform(0.03, 0.06, M)
    refs = [*refs, contaminated]
    names = [f"r{i}" for i in range(len(refs))]
    decision = decide(
        innocent(rng, keys), refs, alpha=0.01, min_references=5, delta0=0.15, reference_names=names
    )
    assert decision.verdict == "inconclusive"
    assert "reference r8 looks unlike the other references" in decision.reason


@pytest.mark.parametrize(("tau", "spread"), [(0.0, 0.0), (0.25, 0.0), (0.1, 0.5)])
def test_the_false_positive_rate_is_at_most_alpha_when_innocent_models_differ(tau, spread):
    """400 simulated innocent suspects against 8 references drawn from the same population, with
    and without a model-wide random effect (tau) and models of unequal noise (spread): the share
    called infringing at alpha = 0.05 stays within the binomial noise of 0.05 (upper 99% bound 0.074)."""
    flagged = 0
    trials = 400
    for seed in range(trials):
        rng, keys, refs = world(100 + seed, 8, tau, spread)
        suspect = innocent(rng, keys, rng.normal(0, tau), 0.18 * math.exp(rng.normal(0, spread)))
        flagged += decide(suspect, refs, alpha=0.05, min_references=5, delta0=0.15).verdict == "infringing"
    assert flagged / trials <= 0.074, flagged
