"""Statistics behind the calibrated verdict: is the suspect's hit count unusual?

The audit counts "hits": key prompts on which the suspect model reproduces the owner's
generated image. Innocent models also hit sometimes (common prompts yield similar
images), so a hit count means nothing without the rate at which models *not* trained
on the owner's images hit. That null rate is measured on reference models, and the
verdict is an exact one-sided binomial test of the suspect's count against it.

The pooled binomial treats the reference models as one population with one hit rate.
When reference models differ much among themselves, that understates the spread and
the binomial p-value is optimistic; the empirical p-value (the suspect's rank among the
references, no model assumed) is reported beside it as a check once there are enough
references for it to reach alpha.

Pure functions of numbers; argument errors are programming errors (ValueError).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict
from scipy import stats

Verdict = Literal["infringing", "not_infringing", "inconclusive"]


def _count(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer count, got a bool")
    try:
        count = operator.index(value)
    except TypeError as exc:
        raise ValueError(f"{name} must be an integer count, got {value!r}") from exc
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def _probability(value: float, name: str, *, open_interval: bool = False) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    if open_interval and number in (0.0, 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return number


def binomial_pvalue(hits: int, trials: int, p0: float) -> float:
    """Exact one-sided P(X >= hits) for X ~ Binomial(trials, p0).

    One-sided because only *more* hits than innocent models would be evidence of
    training on the owner's images; fewer hits is no evidence of anything.
    """
    hits, trials = _count(hits, "hits"), _count(trials, "trials")
    if hits > trials:
        raise ValueError(f"hits ({hits}) cannot exceed trials ({trials})")
    p0 = _probability(p0, "p0")
    # sf(k - 1) = P(X > k - 1) = P(X >= k); the survival function keeps precision in the tail.
    return float(min(1.0, max(0.0, stats.binom.sf(hits - 1, trials, p0))))


def estimate_null_rate(
    reference_hits: Sequence[int], trials: int, prior: tuple[float, float] = (0.5, 0.5)
) -> float:
    """Pooled hit rate of innocent reference models, as a Beta-posterior mean.

    With the Jeffreys prior Beta(1/2, 1/2) this is (total hits + 1/2) / (total trials + 1):
    it is never 0. A zero null rate would make P(X >= 1) = 0, so a single hit by the
    suspect would be "infinitely significant" although a handful of clean references
    simply cannot show a rate below about 1 / (their total trials).
    """
    if len(reference_hits) == 0:
        raise ValueError("at least one reference model is needed to estimate the null rate")
    trials = _count(trials, "trials")
    a, b = (float(value) for value in prior)
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise ValueError(f"prior pseudo-counts must be positive and finite, got {prior!r}")
    total = 0
    for index, value in enumerate(reference_hits):
        count = _count(value, f"reference_hits[{index}]")
        if count > trials:
            raise ValueError(f"reference_hits[{index}] ({count}) cannot exceed trials ({trials})")
        total += count
    return (total + a) / (len(reference_hits) * trials + a + b)


def empirical_pvalue(suspect_score: float, reference_scores: Sequence[float]) -> float:
    """(1 + #{reference >= suspect}) / (1 + n): the suspect's rank among innocent models.

    The +1s count the suspect as one draw of the null, which makes the p-value valid
    (never below 1/(n+1)) without assuming any distribution.
    """
    suspect = float(suspect_score)
    scores = [float(score) for score in reference_scores]
    if not math.isfinite(suspect) or not all(math.isfinite(score) for score in scores):
        raise ValueError("scores must be finite numbers")
    at_least = sum(1 for score in scores if score >= suspect)
    return (1 + at_least) / (1 + len(scores))


def min_achievable_pvalue(trials: int, p0: float) -> float:
    """The smallest binomial p-value possible: every one of `trials` keys hits."""
    return _probability(p0, "p0") ** _count(trials, "trials")


def min_empirical_pvalue(n_refs: int) -> float:
    """The smallest empirical p-value possible with `n_refs` references: 1 / (n + 1)."""
    return 1.0 / (_count(n_refs, "n_refs") + 1)


class CalibratedVerdict(BaseModel):
    """The verdict and every number needed to recompute it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verdict: Verdict
    hits: int
    trials: int
    p_value: float | None  # None only without references
    p0: float | None  # None only without references
    alpha: float
    n_references: int
    empirical_p_value: float | None  # None unless enough references for it to reach alpha
    reason: str


def decide(hits: int, trials: int, reference_hits: Sequence[int], alpha: float = 0.01) -> CalibratedVerdict:
    """Turn a hit count into a verdict, calibrated on the reference models' hit counts.

    - no references: inconclusive, there is no null rate to test against;
    - even `trials` hits out of `trials` could not give p <= alpha: inconclusive, the
      audit had too few keys for its null rate (a "not infringing" would be meaningless);
    - binomial p <= alpha: infringing; otherwise not_infringing (no significant evidence).
    """
    hits, trials = _count(hits, "hits"), _count(trials, "trials")
    if hits > trials:
        raise ValueError(f"hits ({hits}) cannot exceed trials ({trials})")
    alpha = _probability(alpha, "alpha", open_interval=True)
    n_refs = len(reference_hits)
    if n_refs == 0:
        return CalibratedVerdict(
            verdict="inconclusive",
            hits=hits,
            trials=trials,
            p_value=None,
            p0=None,
            alpha=alpha,
            n_references=0,
            empirical_p_value=None,
            reason="no reference models: innocent reference models are needed to estimate the null hit rate",
        )
    p0 = estimate_null_rate(reference_hits, trials)
    p_value = binomial_pvalue(hits, trials, p0)
    empirical = (
        empirical_pvalue(hits, [float(value) for value in reference_hits])
        if min_empirical_pvalue(n_refs) <= alpha
        else None
    )
    floor = min_achievable_pvalue(trials, p0)
    if floor > alpha:
        verdict: Verdict = "inconclusive"
        reason = (
            f"with {trials} keys and null rate p0 = {p0:.4g} no result can reach alpha = {alpha:g}"
            f" (smallest possible p-value {floor:.4g}); use more keys"
        )
    elif p_value <= alpha:
        verdict = "infringing"
        reason = (
            f"{hits}/{trials} hits against null rate p0 = {p0:.4g} from {n_refs} reference models:"
            f" p = {p_value:.4g} <= alpha = {alpha:g}"
        )
    else:
        verdict = "not_infringing"
        reason = (
            f"{hits}/{trials} hits against null rate p0 = {p0:.4g} from {n_refs} reference models:"
            f" p = {p_value:.4g} > alpha = {alpha:g}, no significant evidence of training on the keyset"
        )
    return CalibratedVerdict(
        verdict=verdict,
        hits=hits,
        trials=trials,
        p_value=p_value,
        p0=p0,
        alpha=alpha,
        n_references=n_refs,
        empirical_p_value=empirical,
        reason=reason,
    )
