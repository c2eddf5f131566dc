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
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy import stats

from auditor.verdict_test import ModelTest, SeedDistances, key_minimum, show_p

METHOD = "t2i-auditor.model-test/v1"  # a report records it; verify refuses a method it does not know
FLOOR = 0.01  # distances below this are one reproduction, however faithful (about 2.5/255 RMS)
SPARSE_FRACTION = 0.25  # the sparse statistic compares the lowest and the highest quarter of the keys
TAIL_EPS = 0.1  # z units: keeps the asymmetry finite when a tail is flat (ties at the floor)
TEST_NAME = "model-level prediction t-test (global and sparse statistics, Bonferroni)"


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


# ---------------------------------------------------------------- the test


@dataclass(frozen=True)
class _Fitted:
    """The shipped test fitted on one set of references: their logs, null and gates, computed once."""

    refs: np.ndarray
    null: np.ndarray
    min_p_value: float
    sanity: tuple[float, int]
    varies: bool

    def score(self, suspect: SeedDistances) -> ModelTest:
        x = log_distances(key_minimum(suspect))
        n, m = self.refs.shape
        if m != len(x):
            raise ValueError(f"the suspect has {len(x)} keys, the references {m}")
        z = normalize(x, self.refs)
        values = model_statistics(z)
        t, p = {}, {}
        for i, name in enumerate(_NAMES):
            t[name], p[name] = prediction_pvalue(values[i], self.null[:, i])
        if not low_tail_is_closer(z):
            p["sparse"] = 1.0  # a lopsided model whose low tail is no closer than innocent models: no copy
        return ModelTest(
            method=METHOD,
            test=TEST_NAME,
            floor=FLOOR,
            sparse_keys=sparse_keys(m),
            scale=pooled_scale(self.refs),
            normalized=tuple(float(v) for v in z),
            statistics=dict(zip(_NAMES, (float(v) for v in values), strict=True)),
            reference_statistics={
                name: tuple(float(v) for v in self.null[:, i]) for i, name in enumerate(_NAMES)
            },
            t={k: float(v) for k, v in t.items()},
            df=n - 1,
            p_values={k: float(v) for k, v in p.items()},
            p_value=min(1.0, 2.0 * min(p.values())),
            min_p_value=self.min_p_value,
            sanity_p_value=self.sanity[0],
            sanity_reference=self.sanity[1],
        )


_NAMES = ("global", "sparse")  # the record's order (its dicts), as v1 reports hold them


@dataclass(frozen=True)
class ModelLevelTest:
    """The shipped verdict test (module docstring), as one `auditor.verdict_test.VerdictTest`."""

    method: str = METHOD
    title: str = TEST_NAME
    statistics: MappingProxyType = field(
        default_factory=lambda: MappingProxyType(
            {
                "sparse": "sparse: lowest quarter below the median",
                "global": "global: -median z",
            }
        )
    )
    combination: str = "min(1, 2 min(sparse, global))"
    may_decide: bool = True
    exceedances: tuple = ()  # not measured per kind of innocent (docs/method.md)

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> _Fitted:
        refs = np.stack([log_distances(key_minimum(r)) for r in references])
        n, m = refs.shape
        if n < 3:
            raise ValueError("the model-level test needs at least three references")
        null = leave_one_out(refs)
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
        # at least one statistic's leave-one-out values spread (a test needs some null spread)
        varies = pooled_scale(refs) > 0 and bool(np.any(np.std(null, axis=0, ddof=1) > 0))
        return _Fitted(
            refs=refs,
            null=null,
            min_p_value=min(1.0, 2.0 * p_min),
            sanity=reference_outlier(null),
            varies=varies,
        )

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        """Bonferroni: each statistic's own p at alpha / 2, i.e. mean + t_(1 - alpha/2, df) sd
        sqrt(1 + 1/n) of its leave-one-out null."""
        out = {}
        for name, null in test.reference_statistics.items():
            values = np.asarray(null, dtype=float)
            n = len(values)
            out[name] = float(
                values.mean() + stats.t.isf(alpha / 2, n - 1) * values.std(ddof=1) * math.sqrt(1 + 1 / n)
            )
        return out

    def describe(self, test: ModelTest, n_references: int) -> str:
        return (
            f"sparse p {show_p(test.p_values['sparse'])}, global p {show_p(test.p_values['global'])}"
            f" against {n_references} innocent references (t with {test.df} df)"
        )


MODEL_TEST = ModelLevelTest()


def model_test(suspect: Sequence[float], references: Sequence[Sequence[float]]) -> ModelTest:
    """This test of `suspect` (per-key distances, one seed each) against `references` (n x M), n >= 3."""
    return MODEL_TEST.fit([[[d] for d in r] for r in references], delta0=0.0).score([[d] for d in suspect])


def reference_outlier(null: np.ndarray) -> tuple[float, int]:
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
