"""The v3 verdict test (auditor.key_null_test): its moderation, its simulated null, its level on
simulated innocents and its power on partial copies. The common protocol checks every registered
test runs are in test_verdict_tests.py."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from auditor.key_null_test import (
    DRAWS,
    KEY_DRAWS,
    KEY_NULL_TEST,
    NOISE_READINGS,
    QUANTILE_LEVELS,
    moderated_variances,
    simulate_null,
)
from auditor.reproduction.candidates import CANDIDATES
from auditor.window_test import WINDOW_TEST, key_values

# many simulated fits: a coarser Monte Carlo null (p resolved to 1/4,001) keeps them fast
FAST = replace(KEY_NULL_TEST, draws=4000)
UNMATCHED = replace(CANDIDATES["candidate.window-keynull-unmatched/v3"], draws=4000)

M, J = 30, 4


def _world(rng, tau: float = 0.05, sigma: float = 0.18, omega: float = 0.2, spread: float = 0.0):
    """Key difficulty; per model a shift (tau), per (model, key) an interaction whose sd varies over
    keys by a factor exp(spread * N(0, 1)), and seed noise (times `noise` for a noisier sampler)."""
    keys = rng.normal(math.log(0.25), 0.3, M)
    omegas = omega * np.exp(spread * rng.normal(0, 1, M))

    def model(copied: int = 0, noise: float = 1.0):
        x = keys + rng.normal(0, tau) + rng.normal(0, 1, M) * omegas
        d = np.exp(x[:, None] + rng.normal(0, sigma * noise, (M, J)))
        if copied:
            d[rng.choice(M, copied, replace=False)] = rng.uniform(0.03, 0.06, (copied, J))
        return d

    return model


def _rate(test, n: int, trials: int, seed: int, alpha: float, noise: float = 1.0, **world):
    """(share of innocents flagged, share of 8-key copies flagged) over `trials` simulated worlds, the
    suspects served with `noise` times the references' seed noise."""
    rng = np.random.default_rng(seed)
    innocent = copy = 0
    for _ in range(trials):
        model = _world(rng, **world)
        fitted = test.fit([model() for _ in range(n)], delta0=0.15)
        innocent += fitted.score(model(noise=noise)).p_value <= alpha
        copy += fitted.score(model(copied=8, noise=noise)).p_value <= alpha
    return innocent / trials, copy / trials


def test_moderation_recovers_a_common_variance_and_keeps_distinct_ones():
    rng = np.random.default_rng(0)
    same = 0.04 * rng.chisquare(7, 200) / 7  # one variance, sampled on 7 df
    posterior, df = moderated_variances(same, 7)
    assert math.isinf(df) or df > 100
    np.testing.assert_allclose(posterior, 0.04, rtol=0.15)
    distinct = np.exp(rng.normal(math.log(0.04), 1.0, 200)) * rng.chisquare(7, 200) / 7
    posterior, df = moderated_variances(distinct, 7)
    assert 7 < df < 30  # the prior's df is finite: keys really differ
    assert np.corrcoef(np.log(posterior), np.log(distinct))[0, 1] > 0.9


def test_moderation_refuses_what_it_cannot_moderate():
    with pytest.raises(ValueError, match="positive variances"):
        moderated_variances(np.array([0.1, 0.0]), 3)
    with pytest.raises(ValueError, match="positive variances"):
        moderated_variances(np.array([0.1]), 3)


def test_the_null_is_reproducible_and_its_p_value_is_a_monte_carlo_p_value():
    rng = np.random.default_rng(1)
    model = _world(rng)
    refs = [model() for _ in range(6)]
    first = KEY_NULL_TEST.fit(refs, delta0=0.15)
    again = KEY_NULL_TEST.fit(refs, delta0=0.15)
    assert np.array_equal(first.null.draws, again.null.draws)
    assert len(first.null.draws) == DRAWS
    assert first.null.p(math.inf) == pytest.approx(1 / (DRAWS + 1))
    assert first.null.p(-math.inf) == 1.0
    suspect = model()
    assert first.score(suspect) == again.score(suspect) == first.score(suspect)  # no state between scores


def test_a_linear_window_matches_the_gaussian_prediction_it_simulates():
    """Every key in the window and keys of one variance: T is minus the suspect's mean centered value,
    whose null variance is (sigma_a^2 + s^2 / M)(1 + 1/n); the simulated null's sd must agree with
    that (up to the t draws of the model effect's variance, which widen it a little)."""
    rng = np.random.default_rng(2)
    n = 40
    values = rng.normal(0, 0.05, (n, 1)) + rng.normal(0, 0.2, (n, M))
    null = simulate_null(values, 0, M, draws=20_000)
    effects = (values - values.mean(axis=0)).mean(axis=1)
    expected = math.sqrt(float(np.var(effects, ddof=1)) * (1 + 1 / n))
    assert float(null.draws.std()) == pytest.approx(expected, rel=0.08)
    assert abs(float(null.draws.mean())) < 0.01


@pytest.mark.parametrize("n,spread", [(5, 0.0), (8, 0.5)])
def test_the_level_holds_and_a_quarter_copied_is_seen(n, spread):
    """Simulated innocents (a model shift, per-key interactions of equal or unequal spread, seed noise):
    the share flagged at alpha = 0.05 lies within sampling error of 0.05 or under (300 worlds: sd 0.013);
    a suspect with 8 of 30 keys copied is caught far more often than v2 catches it."""
    innocent, copy = _rate(FAST, n, 300, seed=10 + n, alpha=0.05, spread=spread)
    assert innocent <= 0.08, innocent
    _, copy_v2 = _rate(WINDOW_TEST, n, 300, seed=10 + n, alpha=0.05, spread=spread)
    assert copy >= 0.9 and copy >= copy_v2, (copy, copy_v2)


def test_thresholds_are_the_null_quantiles_and_match_the_p_value():
    rng = np.random.default_rng(3)
    model = _world(rng)
    fitted = KEY_NULL_TEST.fit([model() for _ in range(8)], delta0=0.15)
    record = fitted.score(model())
    assert len(record.null_quantiles["window"]) == len(QUANTILE_LEVELS)
    for alpha in (0.05, 0.01):
        line = KEY_NULL_TEST.thresholds(record, alpha)["window"]
        assert fitted.null.p(line + 1e-9) <= alpha + 1e-3
        assert fitted.null.p(line - 0.02) > alpha
    assert stats.rankdata(record.null_quantiles["window"]).tolist() == list(
        range(1, len(QUANTILE_LEVELS) + 1)
    )


def test_references_that_are_one_model_do_not_vary():
    rng = np.random.default_rng(4)
    one = _world(rng)()
    fitted = KEY_NULL_TEST.fit([one, one, one], delta0=0.15)
    assert not fitted.varies


def test_references_with_other_seed_counts_are_refused():
    rng = np.random.default_rng(5)
    model = _world(rng)
    refs = [model() for _ in range(4)] + [model()[:, :2]]
    with pytest.raises(ValueError, match="seeds per key"):
        KEY_NULL_TEST.fit(refs, delta0=0.15)
    with pytest.raises(ValueError, match="seeds per key"):
        KEY_NULL_TEST.fit(refs[:4], delta0=0.15).score(model()[:, :3])


def test_a_noisier_sampler_is_matched_on_its_far_keys():
    """An innocent served with twice the references' seed noise: without matching the window flags it
    at alpha = 0.05 most of the time; matched on its far keys, far less often (not at 0.05: the
    residual is stated in docs/method.md). A copy served so is still seen."""
    matched, copy = _rate(FAST, 8, 200, seed=3, alpha=0.05, noise=2.0)
    unmatched, _ = _rate(UNMATCHED, 8, 200, seed=3, alpha=0.05, noise=2.0)
    assert unmatched >= 0.7, unmatched
    assert matched <= 0.35, matched
    assert copy >= 0.8, copy


def test_a_model_no_noisier_on_its_far_keys_is_left_as_it_is():
    rng = np.random.default_rng(6)
    model = _world(rng)
    refs = [model() for _ in range(8)]
    quiet = model(noise=0.5)
    assert KEY_NULL_TEST.fit(refs, delta0=0.15).score(quiet).statistics == (
        UNMATCHED.fit(refs, delta0=0.15).score(quiet).statistics
    )


def test_noise_on_the_copied_keys_alone_does_not_move_a_copy_away():
    """Training on the source's images makes a model noisier from seed to seed (the confirmation world);
    where that noise sits on the copied keys, the far-key reading does not see it, so the copy's
    statistic is the unmatched one."""
    rng = np.random.default_rng(8)
    model = _world(rng)
    refs = [model() for _ in range(8)]
    copy = model()
    copied = np.argsort(copy.min(axis=1))[:8]
    copy[copied] = np.exp(np.log(0.045) + rng.normal(0, 0.6, (8, J)))  # close, and noisy
    all_keys = [key_values(m)[1] for m in (copy, *refs)]
    assert all_keys[0] > 1.3 * np.mean(all_keys[1:])  # v2's all-key reading would move this copy away
    fitted = KEY_NULL_TEST.fit(refs, delta0=0.15)
    assert fitted.score(copy).statistics == UNMATCHED.fit(refs, delta0=0.15).score(copy).statistics
    assert fitted.score(copy).p_value <= 0.01


@pytest.mark.parametrize("key_draws", sorted(KEY_DRAWS))
@pytest.mark.parametrize("reading", sorted(NOISE_READINGS))
def test_every_design_variation_fits_and_scores(key_draws, reading):
    """The candidates v3 was chosen from (reproduction.candidates) are rows of two tables, each a
    working test: a copy scores closer than an innocent."""
    rng = np.random.default_rng(9)
    model = _world(rng)
    test = replace(KEY_NULL_TEST, draws=2000, key_draws=key_draws, noise_reading=reading)
    fitted = test.fit([model() for _ in range(8)], delta0=0.15)
    innocent, copy = fitted.score(model()), fitted.score(model(copied=12))
    assert 0 < copy.p_value < innocent.p_value <= 1
    assert copy.statistics["window"] > innocent.statistics["window"]


def test_resampled_draws_are_the_references_own_residuals_widened():
    rng = np.random.default_rng(10)
    residuals = rng.normal(0, 1, (6, M))
    u = rng.uniform(size=(50, M))
    draws, _ = KEY_DRAWS["resampled"](residuals, residuals.var(axis=0, ddof=1), u)
    widened = residuals * math.sqrt(7 / 5)
    for k in range(M):
        assert set(np.round(draws[:, k], 12)) <= set(np.round(widened[:, k], 12))
