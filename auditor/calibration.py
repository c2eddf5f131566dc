"""The verdict: a model-level test of the suspect against innocent reference models.

The unit of replication is the model, not the key: the 30 keys of one model are not 30
independent trials, and innocent models differ from each other (one draws closer to
every key than another). So the suspect is compared with the references as one model
among models (docs/method.md derives each step):

1. **Per key, normalized against the references.** x_i = log(max(d_i, FLOOR)), d_i the
   key's distance (min over the audit seeds). Each key is centered on the references'
   mean for that key and scaled by their pooled spread: z_i = (x_i - mean_r x_ri) / s.
   Easy and hard keys then weigh alike; z_i < 0 is "closer than innocent models get".
2. **Two model-level statistics.** global = -median_i z_i (the whole model closer to
   the keys, what a rho = 1 copy does); sparse = log((median - mean of the lowest
   quarter + e) / (mean of the highest quarter - median + e)), the asymmetry of the
   model's own z's (a few keys copied closely while the rest look innocent, what a low
   share of copied training data does). It is free of the model's own location and
   scale: a model-wide shift, or a noisier model whose keys spread more on both sides,
   leaves it where an innocent model's is; and it counts only when the low tail is
   below the references (mean of the lowest quarter of z < 0).
3. **Their null from the references themselves.** Each reference is scored against the
   others (leave-one-out), giving n draws of each statistic from the innocent
   population. The suspect is one more draw under the null, so each statistic gets a
   Student-t prediction p-value with n - 1 degrees of freedom, which accounts both for
   how much innocent models differ (their spread) and for how few references there are.
4. **One p-value:** p = min(1, 2 min(p_global, p_sparse)) (Bonferroni over the two).

`inconclusive`, with the reason, when there are fewer than `min_references` references,
when even an extreme suspect could not reach alpha (`min_p_value`), when the references
do not vary or vary less than one model's own seed noise allows independent models to
(the same model listed several times under other files), or when one reference looks
unlike the others (a two-sided outlier check, Bonferroni over references and statistics
at SANITY_ALPHA).

The paper's figures stay beside it: conf (the share of keys under delta0) and an exact
binomial on hit counts, labelled with the assumption it makes (keys independent, a null
rate known) and never used for the verdict.

Pure functions of numbers; argument errors are programming errors (ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field
from scipy import stats

from auditor.config import FrozenModel

VerdictName = Literal["infringing", "not_infringing", "inconclusive"]

METHOD = "t2i-auditor.model-test/v1"  # a report records it; verify refuses a method it does not know
FLOOR = 0.01  # distances below this are one reproduction, however faithful (about 2.5/255 RMS)
SPARSE_FRACTION = 0.25  # the sparse statistic compares the lowest and the highest quarter of the keys
TAIL_EPS = 0.1  # z units: keeps the asymmetry finite when a tail is flat (ties at the floor)
DUPLICATE_RATIO = 0.2  # references spread less than this share of one model's seed noise: duplicates
SANITY_ALPHA = 0.01
P_SHOWN_BELOW = 1e-6  # smaller p-values are shown as "< 1e-6": the normal model says nothing that far out
TEST_NAME = "model-level prediction t-test (global and sparse statistics, Bonferroni)"
BINOMIAL_ASSUMPTION = (
    "keys as independent trials with a known null hit rate (the pooled references'); "
    "neither holds, so this is the paper's kind of figure, not the verdict"
)


# ---------------------------------------------------------------- the statistics


def log_distances(distances: np.ndarray | Sequence[float]) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    if d.size == 0 or not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError("distances must be finite, non-negative and not empty")
    return np.log(np.maximum(d, FLOOR))


def pooled_scale(references: np.ndarray) -> float:
    """sqrt(sum over keys and references of squared deviations from the key mean / (M (n - 1)))."""
    n, m = references.shape
    if n < 2:
        raise ValueError("the pooled scale needs at least two references")
    deviations = references - references.mean(axis=0)
    return float(np.sqrt(np.sum(deviations**2) / (m * (n - 1))))


def normalize(x: np.ndarray, references: np.ndarray) -> np.ndarray:
    """z_i = (x_i - mean_r x_ri) / s, s the references' pooled scale."""
    scale = pooled_scale(references)
    if scale <= 0:
        return np.zeros_like(x)  # references identical on every key: nothing to measure against
    return (x - references.mean(axis=0)) / scale


def sparse_keys(num_keys: int) -> int:
    return max(1, int(round(num_keys * SPARSE_FRACTION)))


def model_statistics(z: np.ndarray) -> tuple[float, float]:
    """(global, sparse): -median z, and the log ratio of the low tail's to the high tail's reach
    from the median (lowest and highest quarters), each widened by TAIL_EPS."""
    center = float(np.median(z))
    ordered = np.sort(z)
    k = sparse_keys(len(z))
    low = center - float(ordered[:k].mean())
    high = float(ordered[-k:].mean()) - center
    return -center, math.log((low + TAIL_EPS) / (high + TAIL_EPS))


def low_tail_is_closer(z: np.ndarray) -> bool:
    """The sparse statistic speaks of copying only when the low tail is closer than innocent models."""
    return float(np.sort(z)[: sparse_keys(len(z))].mean()) < 0.0


def leave_one_out(references: np.ndarray) -> np.ndarray:
    """(n, 2): each reference's statistics, normalized against the other references."""
    n = len(references)
    return np.array(
        [model_statistics(normalize(references[r], np.delete(references, r, axis=0))) for r in range(n)]
    )


def prediction_pvalue(value: float, null: np.ndarray) -> tuple[float, float]:
    """(t, one-sided p) of `value` as one more draw of the population `null` came from.

    t = (value - mean) / (sd sqrt(1 + 1/n)), Student t with n - 1 degrees of freedom: the
    prediction interval for a new draw of a normal population of unknown mean and spread.
    """
    n = len(null)
    sd = float(np.std(null, ddof=1))
    if sd <= 0:
        return math.inf if value > float(np.mean(null)) else 0.0, 1.0  # no spread to measure against
    t = (value - float(np.mean(null))) / (sd * math.sqrt(1.0 + 1.0 / n))
    return t, float(stats.t.sf(t, n - 1))


# ---------------------------------------------------------------- the record


class ModelTest(FrozenModel):
    """Every number of the model-level test; `auditor.calibration` recomputes them all from the
    distances in the report."""

    method: str = Field(METHOD, description="which version of the test computed these numbers")
    test: str = TEST_NAME
    floor: float
    sparse_keys: int = Field(description="how many keys the sparse statistic averages")
    scale: float = Field(description="pooled spread of the references' log distances per key")
    normalized: tuple[float, ...] = Field(
        description="the suspect's z per key (negative: closer than innocent)"
    )
    statistics: dict[str, float] = Field(description="the suspect's global and sparse statistics")
    reference_statistics: dict[str, tuple[float, ...]] = Field(description="each reference's, leave-one-out")
    t: dict[str, float]
    df: int
    p_values: dict[str, float]
    p_value: float = Field(description="min(1, 2 min(p_global, p_sparse))")
    min_p_value: float = Field(
        description="the p-value of an extreme suspect (every key, or the hardest quarter, at the floor):"
        " the audit's power gate, not a bound"
    )
    sanity_p_value: float = Field(
        description="the smallest outlier p-value among the references (Bonferroni-adjusted, two-sided)"
    )
    sanity_reference: int = Field(description="index of that reference")


class BinomialFigure(FrozenModel):
    """The exact binomial on hit counts the first version used as its verdict; kept as a figure."""

    hits: int
    trials: int
    p0: float
    p_value: float
    assumption: str = BINOMIAL_ASSUMPTION


class Decision(FrozenModel):
    verdict: VerdictName
    reason: str
    test: ModelTest | None
    binomial: BinomialFigure | None


# ---------------------------------------------------------------- the test


def model_test(suspect: Sequence[float], references: Sequence[Sequence[float]]) -> ModelTest:
    """The test of `suspect` (per-key distances) against `references` (n x M distances), n >= 3."""
    x = log_distances(suspect)
    refs = np.stack([log_distances(r) for r in references])
    n, m = refs.shape
    if n < 3:
        raise ValueError("the model-level test needs at least three references")
    if m != len(x):
        raise ValueError(f"the suspect has {len(x)} keys, the references {m}")
    null = leave_one_out(refs)
    z = normalize(x, refs)
    names = ("global", "sparse")
    values = model_statistics(z)
    t, p = {}, {}
    for i, name in enumerate(names):
        t[name], p[name] = prediction_pvalue(values[i], null[:, i])
    if not low_tail_is_closer(z):
        p["sparse"] = 1.0  # a lopsided model whose low tail is no closer than innocent models: no copy
    # An extreme suspect: every key at the floor (global), or the keys hardest for innocent
    # models at the floor and the rest at the references' mean (sparse).
    floor = math.log(FLOOR)
    extreme_global = model_statistics(normalize(np.full(m, floor), refs))[0]
    hardest = np.argsort(-refs.mean(axis=0))[: sparse_keys(m)]
    sparse_case = refs.mean(axis=0).copy()
    sparse_case[hardest] = floor
    extreme_sparse = model_statistics(normalize(sparse_case, refs))[1]
    p_min = min(
        prediction_pvalue(extreme_global, null[:, 0])[1], prediction_pvalue(extreme_sparse, null[:, 1])[1]
    )
    sanity_p, sanity_ref = _sanity(null)
    return ModelTest(
        floor=FLOOR,
        sparse_keys=sparse_keys(m),
        scale=pooled_scale(refs),
        normalized=tuple(float(v) for v in z),
        statistics=dict(zip(names, (float(v) for v in values), strict=True)),
        reference_statistics={name: tuple(float(v) for v in null[:, i]) for i, name in enumerate(names)},
        t={k: float(v) for k, v in t.items()},
        df=n - 1,
        p_values={k: float(v) for k, v in p.items()},
        p_value=min(1.0, 2.0 * min(p.values())),
        min_p_value=min(1.0, 2.0 * p_min),
        sanity_p_value=sanity_p,
        sanity_reference=sanity_ref,
    )


def _sanity(null: np.ndarray) -> tuple[float, int]:
    """Each reference's leave-one-out statistics against the others': the smallest two-sided
    prediction p-value, Bonferroni-adjusted over references and statistics, and whose it is."""
    n, k = null.shape
    worst, who = 1.0, 0
    for r in range(n):
        others = np.delete(null, r, axis=0)
        for c in range(k):
            sd = float(np.std(others[:, c], ddof=1))
            if sd <= 0:
                continue
            t = (null[r, c] - others[:, c].mean()) / (sd * math.sqrt(1.0 + 1.0 / (n - 1)))
            p = min(1.0, 2.0 * float(stats.t.sf(abs(t), n - 2)) * n * k)
            if p < worst:
                worst, who = p, r
    return worst, who


def binomial_figure(hits: int, trials: int, reference_hits: Sequence[int]) -> BinomialFigure:
    """Exact one-sided P(X >= hits), X ~ Binomial(trials, p0), p0 the references' pooled rate
    (Jeffreys posterior mean, never 0)."""
    if not 0 <= hits <= trials or not reference_hits:
        raise ValueError("hits must lie in [0, trials] and references must be given")
    p0 = (sum(reference_hits) + 0.5) / (len(reference_hits) * trials + 1.0)
    p_value = float(min(1.0, max(0.0, stats.binom.sf(hits - 1, trials, p0))))
    return BinomialFigure(hits=hits, trials=trials, p0=p0, p_value=p_value)


def show_p(p: float) -> str:
    """A p-value as a report states it: three digits, or "< 1e-06" far out in the tail."""
    return f"< {P_SHOWN_BELOW:g}" if p < P_SHOWN_BELOW else f"= {p:.3g}"


def seed_noise(seed_distances: Sequence[Sequence[Sequence[float]]]) -> float | None:
    """One model's own spread over its audit seeds (log distances), pooled over models and keys;
    None with one seed per key."""
    per_model = [np.asarray(m, dtype=np.float64) for m in seed_distances]
    if not per_model or any(m.ndim != 2 or m.shape[1] < 2 for m in per_model):
        return None
    logs = [np.log(np.maximum(m, FLOOR)) for m in per_model]
    return float(np.sqrt(np.mean([np.var(x, axis=1, ddof=1).mean() for x in logs])))


def decide(
    suspect: Sequence[float],
    references: Sequence[Sequence[float]],
    *,
    alpha: float,
    min_references: int,
    delta0: float,
    reference_names: Sequence[str] = (),
    reference_seed_distances: Sequence[Sequence[Sequence[float]]] = (),
) -> Decision:
    """The verdict of the suspect's per-key distances against the references' (module docstring).

    `reference_seed_distances` (per reference, per key, per seed) lets the references be
    compared with one model's own seed noise: references far closer to each other than that
    are one model several times, whatever their files.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    n = len(references)
    hits = int(sum(d < delta0 for d in suspect))
    binomial = (
        binomial_figure(hits, len(suspect), [int(sum(d < delta0 for d in r)) for r in references])
        if n
        else None
    )
    test = model_test(suspect, references) if n >= 3 and _varies(references) else None
    if n < min_references:
        reason = (
            f"{n} innocent reference model{'s' if n != 1 else ''}: the model-level test needs at least "
            f"{min_references} (min_references) to say how much innocent models differ; audit more references"
        )
        return Decision(verdict="inconclusive", reason=reason, test=test, binomial=binomial)
    if test is None:
        reason = "the references' distances do not vary (the same model listed twice?): no null spread to test against"
        return Decision(verdict="inconclusive", reason=reason, test=None, binomial=binomial)
    noise = seed_noise(reference_seed_distances)
    if noise is not None and test.scale < DUPLICATE_RATIO * noise:
        reason = (
            f"the references differ from each other by {test.scale:.3g} (log distance), less than"
            f" {DUPLICATE_RATIO:g} of one model's own seed noise ({noise:.3g}): they are one model several"
            " times, not independent innocent models; use independently trained references"
        )
        return Decision(verdict="inconclusive", reason=reason, test=test, binomial=binomial)
    if test.min_p_value > alpha:
        reason = (
            f"audit without power: with these {n} references an extreme suspect reaches"
            f" p {show_p(test.min_p_value)} > alpha = {alpha:g}; audit more references or more keys"
        )
        return Decision(verdict="inconclusive", reason=reason, test=test, binomial=binomial)
    if test.sanity_p_value < SANITY_ALPHA:
        who = (
            reference_names[test.sanity_reference]
            if test.sanity_reference < len(reference_names)
            else f"reference {test.sanity_reference}"
        )
        reason = (
            f"reference {who} looks unlike the other references (outlier p = {test.sanity_p_value:.3g}"
            f" < {SANITY_ALPHA:g}): it may not be innocent, or not of the same kind; replace it"
        )
        return Decision(verdict="inconclusive", reason=reason, test=test, binomial=binomial)
    parts = (
        f"sparse p {show_p(test.p_values['sparse'])}, global p {show_p(test.p_values['global'])}"
        f" against {n} innocent references (t with {test.df} df)"
    )
    if test.p_value <= alpha:
        return Decision(
            verdict="infringing",
            reason=f"{parts}: p {show_p(test.p_value)} <= alpha = {alpha:g}; the suspect is closer to the keys"
            " than innocent models are",
            test=test,
            binomial=binomial,
        )
    return Decision(
        verdict="not_infringing",
        reason=f"{parts}: p {show_p(test.p_value)} > alpha = {alpha:g}; no significant evidence of training"
        " on the keyset",
        test=test,
        binomial=binomial,
    )


def _varies(references: Sequence[Sequence[float]]) -> bool:
    """At least one statistic's leave-one-out values spread (a test needs some null spread)."""
    refs = np.stack([log_distances(r) for r in references])
    if pooled_scale(refs) <= 0:
        return False
    null = leave_one_out(refs)
    return bool(np.any(np.std(null, axis=0, ddof=1) > 0))
