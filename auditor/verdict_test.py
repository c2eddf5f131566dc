"""What a verdict test is, and the gates every verdict passes through, whichever test made it.

A verdict test is one object: `fit` it on the innocent references' distances, then `score` a
suspect (each model's distances per key and per audit seed: a test chooses how to summarize a
key's seeds, and how to keep a noisier sampler from looking closer); the score is the test's
record (`ModelTest`), the block a report carries, from which the p-value, the reason, the
report's views and the studies' rows are all read.
The tests this version knows are listed in one table (`auditor.verdict_tests`), keyed by
the `method` a report records, so `verify` recomputes a verdict with the test that made it,
and a new test is one more row there: the report, its HTML and figures, and the studies
read any registered test through this protocol and never name a statistic themselves.

Fitting is apart from scoring because the studies score many suspects against one set of
references, and one suspect against many reference sets.

`decide` wraps every test in the same gates: too few references, references that do not
vary or are one model several times, an audit that could not reach alpha at all, and a
reference unlike the others each give `inconclusive` with the reason, before any p-value
counts. Pure functions of numbers; argument errors are programming errors (ValueError).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from auditor.config import FrozenModel

VerdictName = Literal["infringing", "not_infringing", "inconclusive"]
SeedDistances = Sequence[Sequence[float]]  # one model's distances: per key, per audit seed

DUPLICATE_RATIO = 0.2  # references spread less than this share of one model's seed noise: duplicates
SANITY_ALPHA = 0.01
SEED_NOISE_FLOOR = 0.01  # seed noise is measured on log(max(d, this)), the tests' floor
P_SHOWN_BELOW = 1e-6  # smaller p-values are shown as "< 1e-6": the normal model says nothing that far out


class ModelTest(FrozenModel):
    """Every number of one verdict test on one suspect; the test named by `method` recomputes
    them all from the distances in the report."""

    method: str = Field(description="which test, in which version, computed these numbers")
    test: str = Field(description="the test's name in words")
    floor: float
    sparse_keys: int = Field(description="how many keys the sparse statistic averages")
    scale: float = Field(description="pooled spread of the references' log distances per key")
    normalized: tuple[float, ...] = Field(
        description="the suspect's z per key (negative: closer than innocent)"
    )
    statistics: dict[str, float] = Field(description="the suspect's model-level statistics")
    reference_statistics: dict[str, tuple[float, ...]] = Field(description="each reference's, leave-one-out")
    t: dict[str, float] = Field(
        description="per statistic, how far the suspect stands from its null in the null's sds: a"
        " Student t where the null is a t distribution (v2), the distance from the simulated null's mean"
        " where it is simulated (v3, `null_quantiles` set)"
    )
    df: int = Field(
        description="the references' count less one: the t distribution's degrees of freedom where the"
        " null is one; a simulated null's p-value does not use it"
    )
    p_values: dict[str, float]
    p_value: float = Field(description="the statistics' p-values combined as the test states (`combination`)")
    min_p_value: float = Field(
        description="the p-value of an extreme suspect (every key, or the hardest quarter, at the floor):"
        " the audit's power gate, not a bound"
    )
    sanity_p_value: float = Field(
        description="the smallest outlier p-value among the references (Bonferroni-adjusted, two-sided)"
    )
    sanity_reference: int = Field(description="index of that reference")
    null_quantiles: dict[str, tuple[float, ...]] = Field(
        default_factory=dict,
        description="per statistic, a simulated null's upper quantiles at the test's fixed levels"
        " (tests whose null is simulated; empty for the others): where the figures draw alpha",
    )


class BinomialFigure(FrozenModel):
    """The exact binomial on hit counts the first version used as its verdict; kept as a figure."""

    hits: int
    trials: int
    p0: float
    p_value: float
    assumption: str = (
        "keys as independent trials with a known null hit rate (the pooled references'); "
        "neither holds, so this is the paper's kind of figure, not the verdict"
    )


class Decision(FrozenModel):
    verdict: VerdictName
    reason: str
    test: ModelTest | None
    binomial: BinomialFigure | None


@dataclass(frozen=True)
class Exceedance:
    """A kind of innocent suspect that the world confirming a test flagged more often than alpha.

    A report cannot see that its suspect is of that kind (an endpoint does not say how it
    samples, nor how many images it was trained on), so every report the test decides names
    these cases in its caution, with the measured rate (docs/method.md, "What the verdict claims")."""

    case: str  # the kind of innocent, in words a reader of the report knows
    rate: float  # false-positive rate, averaged over reference sets
    alpha: float
    references: int
    models: int  # how many such innocents the rate rests on
    world: str  # the study world that measured it, and its number of keys where not 30


def exceedance_caution(exceedances: Sequence[Exceedance]) -> str | None:
    """The caution a report of the test carries, or None where its confirming world found no such case."""
    if not exceedances:
        return None
    cases = "; ".join(
        f"{e.case}: {e.rate:.3f} at alpha {e.alpha:g} with {e.references} references"
        f" ({e.models} models, {e.world})"
        for e in exceedances
    )
    return (
        "innocents of these kinds were flagged more often than alpha when this test was measured,"
        f" and a report cannot tell whether its suspect is one: {cases}"
    )


class FittedTest(Protocol):
    """A verdict test fitted on one set of references: scores any suspect against them.

    `varies` says whether the references spread enough for the test to have a null at all;
    when they do not, `decide` says so rather than score."""

    varies: bool

    def score(self, suspect: SeedDistances) -> ModelTest:
        """The test's record for `suspect` (per key, in the references' key order, per audit seed)."""
        ...


class VerdictTest(Protocol):
    """One verdict test: what it is called, what its statistics mean, how it is fitted and read.

    `statistics` maps each statistic's name (the keys of the record's `statistics`,
    `p_values` and `reference_statistics`) to what it measures, in the order the views show
    them; `combination` says how the record's `p_value` comes from theirs. A test that may
    not decide a report (`may_decide` False: a figure kept for comparison, such as the
    first version's binomial rule) is scored by the studies, and `verify` refuses a report
    whose verdict it made. `exceedances` are the kinds of innocents its confirming world
    flagged above alpha, which every report it decides names.
    """

    method: str
    title: str
    statistics: Mapping[str, str]
    combination: str
    may_decide: bool
    exceedances: tuple[Exceedance, ...]  # measured where alpha was exceeded; () where none was

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> FittedTest:
        """Fit on the references' distances (n models x M keys x J seeds, n >= 3, J the same for
        all); `delta0` is the audit's."""
        ...

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        """Where each statistic must lie for the record's p-value to reach `alpha` (the figures)."""
        ...

    def describe(self, test: ModelTest, n_references: int) -> str:
        """The evidence in one clause: each statistic's p-value and what it was tested against."""
        ...


def seed_matrix(distances: SeedDistances) -> np.ndarray:
    """One model's distances as an M x J array; ValueError unless finite, non-negative, J >= 1 and
    the same for every key."""
    try:
        d = np.asarray(distances, dtype=np.float64)
    except ValueError:
        raise ValueError("distances must have the same number of seeds for every key") from None
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"distances must be keys x seeds, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError("distances must be finite and non-negative")
    return d


def key_minimum(distances: SeedDistances) -> np.ndarray:
    """Per key, the min over its audit seeds: the distance the report shows."""
    return seed_matrix(distances).min(axis=1)


def show_p(p: float) -> str:
    """A p-value as a report states it: three digits, or "< 1e-06" far out in the tail."""
    return f"< {P_SHOWN_BELOW:g}" if p < P_SHOWN_BELOW else f"= {p:.3g}"


def binomial_figure(hits: int, trials: int, reference_hits: Sequence[int]) -> BinomialFigure:
    """Exact one-sided P(X >= hits), X ~ Binomial(trials, p0), p0 the references' pooled rate
    (Jeffreys posterior mean, never 0)."""
    from scipy import stats

    if not 0 <= hits <= trials or not reference_hits:
        raise ValueError("hits must lie in [0, trials] and references must be given")
    p0 = (sum(reference_hits) + 0.5) / (len(reference_hits) * trials + 1.0)
    p_value = float(min(1.0, max(0.0, stats.binom.sf(hits - 1, trials, p0))))
    return BinomialFigure(hits=hits, trials=trials, p0=p0, p_value=p_value)


def seed_noise(seed_distances: Sequence[Sequence[Sequence[float]]]) -> float | None:
    """One model's own spread over its audit seeds (log distances), pooled over models and keys;
    None with one seed per key."""
    per_model = [np.asarray(m, dtype=np.float64) for m in seed_distances]
    if not per_model or any(m.ndim != 2 or m.shape[1] < 2 for m in per_model):
        return None
    logs = [np.log(np.maximum(m, SEED_NOISE_FLOOR)) for m in per_model]
    return float(np.sqrt(np.mean([np.var(x, axis=1, ddof=1).mean() for x in logs])))


def decide(
    suspect: SeedDistances,
    references: Sequence[SeedDistances],
    *,
    test: VerdictTest,
    alpha: float,
    min_references: int,
    delta0: float,
    reference_names: Sequence[str] = (),
) -> Decision:
    """The verdict of the suspect's distances (per key, per audit seed) against the references', by
    `test`. The references' seed-to-seed spread is one model's own seed noise: references far closer
    to each other than that are one model several times, whatever their files.
    """
    n = len(references)
    hits = int(np.sum(key_minimum(suspect) < delta0))
    binomial = (
        binomial_figure(hits, len(suspect), [int(np.sum(key_minimum(r) < delta0)) for r in references])
        if n
        else None
    )
    fitted = test.fit(references, delta0=delta0) if n >= 3 else None
    record = fitted.score(suspect) if fitted is not None and fitted.varies else None
    verdict, reason = judge(
        record,
        test=test,
        n_references=n,
        alpha=alpha,
        min_references=min_references,
        noise=seed_noise(references),
        reference_names=reference_names,
    )
    return Decision(verdict=verdict, reason=reason, test=record, binomial=binomial)


def judge(
    record: ModelTest | None,
    *,
    test: VerdictTest,
    n_references: int,
    alpha: float,
    min_references: int,
    noise: float | None,
    reference_names: Sequence[str] = (),
) -> tuple[VerdictName, str]:
    """The gates and the verdict on a scored record (None: the references did not vary), with the
    reason; `noise` is the references' own seed noise (`seed_noise`). The studies score each
    suspect once per reference set and judge the record at every alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    n = n_references
    if n < min_references:
        return "inconclusive", (
            f"{n} innocent reference model{'s' if n != 1 else ''}: the model-level test needs at least "
            f"{min_references} (min_references) to say how much innocent models differ; audit more references"
        )
    if record is None:
        return "inconclusive", (
            "the references' distances do not vary (the same model listed twice?): no null spread to test against"
        )
    if noise is not None and record.scale < DUPLICATE_RATIO * noise:
        return "inconclusive", (
            f"the references differ from each other by {record.scale:.3g} (log distance), less than"
            f" {DUPLICATE_RATIO:g} of one model's own seed noise ({noise:.3g}): they are one model several"
            " times, not independent innocent models; use independently trained references"
        )
    if record.min_p_value > alpha:
        return "inconclusive", (
            f"audit without power: with these {n} references an extreme suspect reaches"
            f" p {show_p(record.min_p_value)} > alpha = {alpha:g}; audit more references or more keys"
        )
    if record.sanity_p_value < SANITY_ALPHA:
        who = (
            reference_names[record.sanity_reference]
            if record.sanity_reference < len(reference_names)
            else f"reference {record.sanity_reference}"
        )
        return "inconclusive", (
            f"reference {who} looks unlike the other references (outlier p = {record.sanity_p_value:.3g}"
            f" < {SANITY_ALPHA:g}): it may not be innocent, or not of the same kind; replace it"
        )
    parts = test.describe(record, n)
    if record.p_value <= alpha:
        return "infringing", (
            f"{parts}: p {show_p(record.p_value)} <= alpha = {alpha:g}; the suspect is closer to the keys"
            " than innocent models are"
        )
    return "not_infringing", (
        f"{parts}: p {show_p(record.p_value)} > alpha = {alpha:g}; no significant evidence of training"
        " on the keyset"
    )
