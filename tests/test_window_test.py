"""The v2 verdict test (auditor.window_test): its derivation, its level on simulated innocents of
several kinds, and its power on partial copies. The common protocol checks every registered test
runs are in test_verdict_tests.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from auditor.reproduction.candidates import CANDIDATES
from auditor.window_test import WINDOW_TEST, WindowTest, key_values, leave_one_out, window

M, J = 30, 4


def _world(rng, tau: float = 0.08, sigma: float = 0.18, omega: float = 0.1):
    """Key difficulty; per model a shift (tau), per (model, key) an interaction (omega) and seed noise."""
    keys = rng.normal(math.log(0.25), 0.3, M)

    def model(noise: float = 1.0, copied: int = 0):
        x = keys + rng.normal(0, tau) + rng.normal(0, omega, M)
        d = np.exp(x[:, None] + rng.normal(0, sigma * noise, (M, J)))
        if copied:
            d[rng.choice(M, copied, replace=False)] = rng.uniform(0.03, 0.06, (copied, J))
        return d

    return model


def _rate(test, n: int, trials: int, seed: int, alpha: float, **suspect) -> float:
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(trials):
        model = _world(rng)
        refs = [model() for _ in range(n)]
        flagged += test.fit(refs, delta0=0.15).score(model(**suspect)).p_value <= alpha
    return flagged / trials


def test_the_window_is_the_4th_to_the_11th_closest_of_30_keys():
    assert window(30) == (3, 11)
    assert window(12) == (2, 5)
    assert window(1) == (0, 1) and window(2) == (1, 2)


def test_a_window_of_every_key_is_the_textbook_prediction_t_test_on_model_means():
    """The derivation (module docstring, step 3) made checkable: with every key in the window and no
    noise matching, the statistic is linear and its p-value must be the classical prediction t-test
    of the suspect's mean log distance against the references' (n - 1 df, sd sqrt(1 + 1/n))."""
    rng = np.random.default_rng(0)
    model = _world(rng)
    refs = [model() for _ in range(6)]
    suspect = model()
    test = WindowTest(summary="mean", low=0.0, high=1.0, correction="none")
    record = test.fit(refs, delta0=0.15).score(suspect)
    means = np.array([key_values(r, "mean")[0].mean() for r in refs])
    s = key_values(suspect, "mean")[0].mean()
    t = (means.mean() - s) / (means.std(ddof=1) * math.sqrt(1 + 1 / len(means)))
    assert record.p_value == pytest.approx(stats.t.sf(t, len(means) - 1), rel=1e-9)


def test_leave_one_out_values_are_rescaled_to_the_suspects_distribution():
    """For n references the left-out reference's centered values are wider by (1 + 1/(n-1)) against
    the suspect's (1 + 1/n); the constant sqrt((n+1)(n-1))/n removes exactly that."""
    rng = np.random.default_rng(1)
    n = 5
    values = rng.normal(0, 1, (n, M))
    fitted = WindowTest(summary="mean", low=0.0, high=1.0, correction="none").fit(
        [np.exp(v)[:, None].repeat(2, axis=1) for v in values], delta0=0.15
    )
    c = math.sqrt((n + 1) * (n - 1)) / n
    expected = [-(c * (values[r] - np.delete(values, r, axis=0).mean(axis=0))).mean() for r in range(n)]
    np.testing.assert_allclose(leave_one_out(values, np.zeros(n), fitted.model), expected, rtol=1e-9)


@pytest.mark.parametrize("n", [5, 8])
def test_the_level_holds_on_simulated_innocents(n):
    """Innocent models with a model-wide shift, per-key interactions and seed noise: the share flagged
    at alpha = 0.05 lies within sampling error of 0.05 (1,000 worlds: sd 0.007)."""
    rate = _rate(WINDOW_TEST, n, 1000, seed=10 + n, alpha=0.05)
    assert 0.025 <= rate <= 0.075, rate


def test_a_noisier_sampler_is_matched_to_the_references():
    """An innocent served with twice the seed noise: the raw min over seeds (the review's window)
    flags it at alpha = 0.05 about 9 times in 10 (simulated, docs/method.md); v2 moves it away by
    the min's extra drift and shrinks its extra spread, which brings that to about 0.14. Not to
    0.05: the residual is stated in docs/method.md, and the trained sampling variants measured it."""
    rate_v2 = _rate(WINDOW_TEST, 8, 400, seed=3, alpha=0.05, noise=2.0)
    rate_min = _rate(CANDIDATES["candidate.window-min/dev"], 8, 400, seed=3, alpha=0.05, noise=2.0)
    assert rate_min >= 0.6, rate_min
    assert rate_v2 <= 0.22, rate_v2


def test_a_model_no_noisier_than_the_references_is_never_moved_closer():
    rng = np.random.default_rng(6)
    model = _world(rng)
    refs = [model() for _ in range(8)]
    quiet = model(noise=0.5)
    v2 = WINDOW_TEST.fit(refs, delta0=0.15).score(quiet)
    raw = CANDIDATES["candidate.window-min/dev"].fit(refs, delta0=0.15).score(quiet)
    assert v2.statistics == raw.statistics


def test_a_copy_of_a_quarter_of_the_keys_is_seen():
    """8 of 30 keys copied (what rho = 0.3 exposes in the study's world), 8 references, alpha = 0.01."""
    assert _rate(WINDOW_TEST, 8, 200, seed=4, alpha=0.01, copied=8) >= 0.9


def test_references_with_other_seed_counts_are_refused():
    rng = np.random.default_rng(5)
    model = _world(rng)
    refs = [model() for _ in range(4)] + [model()[:, :2]]
    with pytest.raises(ValueError, match="seeds per key"):
        WINDOW_TEST.fit(refs, delta0=0.15)
    with pytest.raises(ValueError, match="seeds per key"):
        WINDOW_TEST.fit(refs[:4], delta0=0.15).score(model()[:, :3])
