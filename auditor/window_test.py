"""The verdict (v2): one statistic over a window of the suspect's closest keys, against references.

Why a window (docs/method.md derives each step). A model that trained on a share rho of the
source's generations inherits some of the keys, not all: about 1 - (1 - 1/P)^(rho n) of them
for n training images over P key prompts, a quarter to a half of the keys at rho = 0.3 in
the worlds we measured. The first model-level test's two statistics missed exactly that:
the median moves with the copied keys, and the tail ratio's denominator grows with them. So
the statistic here is the mean of the suspect's keys ranked from just past its closest 10%
to its closest 35% (the 4th to the 11th of 30), each key centered on the references' mean
for that key: a copy of 10-50% of the keys moves the window as far as a wholesale copy moves
it, while the few keys an innocent model comes close to by chance (its lowest 10%) are left
out, which keeps the statistic's innocent spread small.

1. **Per key, the min over its audit seeds, and a noisier model matched to the references.**
   x_i = min_j log(max(d_ij, FLOOR)), what the report shows. The min is where a memory shows
   (a copied key is reproduced from some seeds, not all), but it rewards a model whose
   generations vary more from seed to seed (another sampler, fewer steps, half precision):
   its min lies lower by about one extra seed-noise sd (J = 4), and its keys spread wider.
   So a model whose own seed noise (the median over keys of the within-key variance of its
   log distances, meant to keep copied keys from moving it) exceeds the references' mean is
   brought to what it would show with theirs: moved away from the keys by the min's extra
   drift (E[min of J normals] times the extra sd) and its spread about its own mean shrunk by
   the min's extra variance (`correction="min-noisier"`). A model no noisier than the
   references is left alone: the correction never moves a model closer. Chosen over the
   mean over seeds on the development world, where other samplers changed how keys spread
   more than how noisy each key was (docs/method.md). The confirmation world then showed
   that infringers are noisier too, even at the median key (half again at rho = 0.3), so
   this guard costs power against real copies (docs/reproduction.md, the confirmation world).
2. **The statistic:** T = -mean of sorted(x - mean_r x_r)[lo:hi], lo = ceil(0.10 M),
   hi = ceil(0.35 M); positive when the suspect's window of keys is closer than innocent
   models get. No pooled-scale division: T is in log-distance units and the null's own
   spread scales it.
3. **The null from the references themselves, with the scale right.** Each reference's
   centered values against the other n - 1 (leave-one-out) are multiplied by
   c = sqrt((n + 1)(n - 1)) / n, which makes them distributed exactly as the suspect's
   centered values are under the null (a Gaussian model with any key difficulty, model
   effect and key noise): the suspect's centered values have variance (1 + 1/n) per unit,
   a left-out reference's (1 + 1/(n - 1)). So each T_r is one draw of the suspect's null
   distribution. The n draws are not independent: they are deviations from the references'
   own mean, correlated -1/(n - 1) for a statistic linear in the values, which makes their
   mean exact and their sample variance too large by n / (n - 1). The p-value is
   t_(n-1) of (T - mean_r T_r) / (sd_r T_r sqrt(f)), f = (n - 1) / n, exact for the linear
   part (the textbook prediction t for one more draw); `docs/method.md` says what the
   window's nonlinearity does to it, and the studies measure the level over many sets.

`inconclusive` gates are the shared ones (`auditor.verdict_test.judge`): too few references,
references that do not vary or are one model several times, an audit that could not reach
alpha (every key of the suspect at the floor, `min_p_value`), or one reference unlike the
others (a two-sided outlier check on the leave-one-out values, Bonferroni over references).

Pure functions of numbers; argument errors are programming errors (ValueError).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
from scipy import integrate, stats

from auditor.calibration import FLOOR, pooled_scale, reference_outlier
from auditor.verdict_test import Exceedance, ModelTest, SeedDistances, VerdictTest, seed_matrix, show_p

METHOD = "t2i-auditor.window-test/v2"
LOW, HIGH = 0.10, 0.35  # the window: from just past the closest 10% of keys to the closest 35%
WINDOW_STATISTICS = {"window": "window: -mean of the keys ranked 10-35% closest, centered on the references"}
TEST_NAME = "model-level window t-test (keys ranked 10-35% closest, min over seeds, a noisier model matched, leave-one-out null)"

# The confirmation world's innocent groups above alpha = 0.01 with 8 references (1,000 reference sets;
# docs/studies/confirm-rescore-1000-sets.md). Groups of 4-5 models rest on one or two of them.
V2_EXCEEDANCES = (
    Exceedance(
        "a fine-tune on twice as many images as the references (the study's: 128, not 64)",
        0.053,
        0.01,
        8,
        5,
        "confirmation world",
    ),
    Exceedance("a suspect served with 10 sampling steps", 0.018, 0.01, 8, 30, "confirmation world"),
    Exceedance(
        "a fine-tune trained 1.6 times as long (the study's: 1,280 steps, not 800)",
        0.017,
        0.01,
        8,
        4,
        "confirmation world",
    ),
    Exceedance("a suspect served in bfloat16", 0.012, 0.01, 8, 30, "confirmation world"),
)


# How a key's J seeds become one value, and the share of one seed's noise variance that value
# keeps (the mean's is 1/J; the min's, Var[min of J standard normals], is `min_spread(J)`).
SUMMARIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "min": lambda logs: logs.min(axis=1),
    "mean": lambda logs: logs.mean(axis=1),
}


def seed_share(summary: str, seeds: int) -> float:
    return min_spread(seeds) if summary == "min" else 1.0 / seeds


def key_values(distances: SeedDistances, summary: str = "min") -> tuple[np.ndarray, float]:
    """Per key, the summary over its audit seeds of log(max(d, FLOOR)); and the model's own seed
    noise, the median over keys of the within-key variance of those logs (0 with one seed per key)."""
    if summary not in SUMMARIES:
        raise ValueError(f"summary must be one of {sorted(SUMMARIES)}, got {summary!r}")
    logs = np.log(np.maximum(seed_matrix(distances), FLOOR))
    noise = float(np.median(np.var(logs, axis=1, ddof=1))) if logs.shape[1] > 1 else 0.0
    return SUMMARIES[summary](logs), noise


@functools.lru_cache(maxsize=64)
def min_drift(seeds: int) -> float:
    """-E[min of `seeds` standard normals]: how far, in seed-noise sds, the min over a key's seeds
    lies below the model's typical log distance (0 for one seed, 1.03 for four)."""
    if seeds < 2:
        return 0.0
    value, _ = integrate.quad(
        lambda z: z * seeds * stats.norm.pdf(z) * stats.norm.sf(z) ** (seeds - 1), -12, 12
    )
    return -float(value)


@functools.lru_cache(maxsize=64)
def min_spread(seeds: int) -> float:
    """Var[min of `seeds` standard normals]: the min's seed-noise variance, in units of one seed's."""
    if seeds < 2:
        return 1.0
    density = lambda z: seeds * stats.norm.pdf(z) * stats.norm.sf(z) ** (seeds - 1)  # noqa: E731
    second, _ = integrate.quad(lambda z: z * z * density(z), -12, 12)
    return float(second - min_drift(seeds) ** 2)


def min_noise_matched(
    centered: np.ndarray, noise: float, target: float, interaction: float, seeds: int
) -> np.ndarray:
    """A model noisier from seed to seed than the references, its min-over-seeds values brought to
    what they would be with the references' seed noise: moved away from the keys by the min's extra
    drift, and their spread about the model's own mean shrunk by the min's extra variance. A model
    no noisier than the references is left as it is (never moved closer)."""
    if noise <= target:
        return centered
    shifted = centered + min_drift(seeds) * (math.sqrt(noise) - math.sqrt(target))
    own = interaction + min_spread(seeds) * noise
    if own <= 0:
        return shifted
    location = float(shifted.mean())
    return location + (shifted - location) * math.sqrt((interaction + min_spread(seeds) * target) / own)


def noise_matched(
    centered: np.ndarray, noise: float, target: float, interaction: float, seeds: int
) -> np.ndarray:
    """The model's centered values with their spread about the model's own mean brought to what it
    would be with the references' seed noise: deviations times
    sqrt((interaction + target / J) / (interaction + noise / J)). A suspect served with a noisier
    sampler spreads its keys wider on both sides, and a window of its lowest keys would read that
    as closeness; its location (a copy of every key) is kept."""
    own = interaction + noise / seeds
    if own <= 0:
        return centered
    location = float(centered.mean())
    return location + (centered - location) * math.sqrt((interaction + target / seeds) / own)


def window(num_keys: int, low: float = LOW, high: float = HIGH) -> tuple[int, int]:
    """[lo, hi): the 0-based ranks the statistic averages; at least one key, the lowest left out
    only when there are keys to spare."""
    if num_keys < 1 or not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need keys and 0 <= low < high <= 1, got {num_keys}, {low}, {high}")
    lo = min(math.ceil(low * num_keys - 1e-9), num_keys - 1)
    hi = min(max(math.ceil(high * num_keys - 1e-9), lo + 1), num_keys)
    return lo, hi


def window_statistic(centered: np.ndarray, lo: int, hi: int) -> float:
    """-mean of the centered values ranked lo..hi-1 (lowest first): positive = closer than innocent."""
    return -float(np.sort(centered)[lo:hi].mean())


@dataclass(frozen=True)
class _Null:
    """What the references say about innocent models, for one window and one seed count."""

    means: np.ndarray  # per key, the references' mean value
    target: float  # their mean seed noise (variance of one seed's log distance)
    interaction: float  # the per-key spread about a model's own mean that seed noise does not explain
    seeds: int
    lo: int
    hi: int
    correction: str

    def statistic(self, centered: np.ndarray, noise: float) -> float:
        return window_statistic(CORRECTIONS[self.correction](centered, noise, self), self.lo, self.hi)


# What is done to a model's centered values for its own seed noise (`noise`) against the
# references' (`null.target`): v2's "min-noisier", and the design candidates' others.
CORRECTIONS: dict[str, Callable[[np.ndarray, float, _Null], np.ndarray]] = {
    "min-noisier": lambda c, noise, null: min_noise_matched(
        c, noise, null.target, null.interaction, null.seeds
    ),
    "none": lambda c, noise, null: c,
    "spread": lambda c, noise, null: noise_matched(c, noise, null.target, null.interaction, null.seeds),
    "min-shift": lambda c, noise, null: (
        c + min_drift(null.seeds) * (math.sqrt(noise) - math.sqrt(null.target))
    ),
    "min-shift-up": lambda c, noise, null: (
        c + min_drift(null.seeds) * max(0.0, math.sqrt(noise) - math.sqrt(null.target))
    ),
}


def _null(
    values: np.ndarray, noises: np.ndarray, seeds: int, lo: int, hi: int, correction: str, summary: str
) -> _Null:
    n = len(values)
    centered = values - values.mean(axis=0)
    # a model's spread about its own mean, corrected for the references' mean holding it ((n-1)/n)
    spread = float(np.var(centered, axis=1, ddof=1).mean()) * n / (n - 1)
    target = float(noises.mean())
    return _Null(
        means=values.mean(axis=0),
        target=target,
        interaction=max(spread - seed_share(summary, seeds) * target, 0.0),
        seeds=seeds,
        lo=lo,
        hi=hi,
        correction=correction,
    )


def leave_one_out(values: np.ndarray, noises: np.ndarray, null: _Null) -> np.ndarray:
    """(n,): each reference's statistic, its values centered on the other references' mean and
    multiplied by sqrt((n + 1)(n - 1)) / n so that it is distributed as a suspect's is."""
    n = len(values)
    c = math.sqrt((n + 1) * (n - 1)) / n
    total = values.sum(axis=0)
    out = np.empty(n)
    for r in range(n):
        others_mean = (total - values[r]) / (n - 1)
        out[r] = null.statistic(c * (values[r] - others_mean), float(noises[r]))
    return out


def prediction_scale(null: np.ndarray) -> float:
    """sd of the leave-one-out statistics times sqrt((n - 1) / n): the sd of a new draw about their
    mean (module docstring, step 3)."""
    n = len(null)
    return float(np.std(null, ddof=1)) * math.sqrt((n - 1) / n)


@dataclass(frozen=True)
class _Fitted:
    test: WindowTest
    values: np.ndarray  # n x M key values of the references
    model: _Null
    null: np.ndarray  # n leave-one-out statistics
    scale: float
    min_p_value: float
    sanity: tuple[float, int]
    varies: bool

    def p(self, value: float) -> tuple[float, float]:
        n = len(self.null)
        if self.scale <= 0:
            return (math.inf if value > float(self.null.mean()) else 0.0), 1.0
        t = (value - float(self.null.mean())) / self.scale
        return t, float(stats.t.sf(t, n - 1))

    def score(self, suspect: SeedDistances) -> ModelTest:
        matrix = seed_matrix(suspect)
        x, noise = key_values(matrix, self.test.summary)
        n, m = self.values.shape
        if m != len(x):
            raise ValueError(f"the suspect has {len(x)} keys, the references {m}")
        if matrix.shape[1] != self.model.seeds:
            raise ValueError(
                f"the suspect has {matrix.shape[1]} seeds per key, the references {self.model.seeds}"
            )
        centered = x - self.model.means
        value = self.model.statistic(centered, noise)
        t, p = self.p(value)
        return window_record(
            self.test, self.values, centered, value, self.null, float(t), p,
            keys=self.model.hi - self.model.lo, min_p_value=self.min_p_value, sanity=self.sanity,
        )  # fmt: skip


def window_record(
    test: VerdictTest, references: np.ndarray, centered: np.ndarray, value: float, loo: np.ndarray, t: float,
    p: float,
    *, keys: int, min_p_value: float, sanity: tuple[float, int], **extra,
) -> ModelTest:  # fmt: skip
    """The record of a window test (v2's or v3's) on one suspect: its window statistic, the references'
    leave-one-out ones, its p-value, and per key the suspect's centered values over the references'
    pooled scale (the report's z)."""
    spread = pooled_scale(references)
    n, m = references.shape
    return ModelTest(
        method=test.method,
        test=test.title,
        floor=FLOOR,
        sparse_keys=keys,
        scale=spread,
        normalized=tuple(float(v) for v in (centered / spread if spread > 0 else np.zeros(m))),
        statistics={"window": value},
        reference_statistics={"window": tuple(float(v) for v in loo)},
        t={"window": t},
        df=n - 1,
        p_values={"window": p},
        p_value=p,
        min_p_value=min_p_value,
        sanity_p_value=sanity[0],
        sanity_reference=sanity[1],
        **extra,
    )


@dataclass(frozen=True)
class WindowTest:
    """The v2 verdict test (module docstring), as one `auditor.verdict_test.VerdictTest`.

    `summary`, `correction`, `low` and `high` are fixed for the registered method; other values exist for the
    design comparison (`auditor.reproduction.candidates`), under other method names."""

    method: str = METHOD
    title: str = TEST_NAME
    summary: str = "min"
    correction: str = "min-noisier"  # a CORRECTIONS row; the others are the design candidates'

    low: float = LOW
    high: float = HIGH
    statistics: MappingProxyType = field(default_factory=lambda: MappingProxyType(WINDOW_STATISTICS))
    combination: str = "the window statistic's p-value"
    may_decide: bool = True
    exceedances: tuple[Exceedance, ...] = V2_EXCEEDANCES

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> _Fitted:
        pairs = [key_values(r, self.summary) for r in references]
        values = np.stack([v for v, _ in pairs])
        noises = np.array([s for _, s in pairs])
        n, m = values.shape
        if n < 3:
            raise ValueError("the window test needs at least three references")
        seeds = {seed_matrix(r).shape[1] for r in references}
        if len(seeds) != 1:
            raise ValueError(f"the references have different numbers of seeds per key: {sorted(seeds)}")
        lo, hi = window(m, self.low, self.high)
        model = _null(values, noises, seeds.pop(), lo, hi, self.correction, self.summary)
        null = leave_one_out(values, noises, model)
        scale = prediction_scale(null)
        fitted = _Fitted(
            test=self,
            values=values,
            model=model,
            null=null,
            scale=scale,
            min_p_value=1.0,
            sanity=reference_outlier(null[:, None]),
            varies=bool(pooled_scale(values) > 0 and scale > 0),
        )
        # an extreme suspect: every key at the floor on every seed (the most the window can see)
        extreme = model.statistic(math.log(FLOOR) - model.means, 0.0)
        return replace(fitted, min_p_value=fitted.p(extreme)[1])

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        """Where the window statistic reaches alpha: mean + t_(1 - alpha, n - 1) sd sqrt((n - 1) / n)."""
        null = np.asarray(test.reference_statistics["window"], dtype=float)
        n = len(null)
        return {"window": float(null.mean() + stats.t.isf(alpha, n - 1) * prediction_scale(null))}

    def describe(self, test: ModelTest, n_references: int) -> str:
        return (
            f"window statistic {test.statistics['window']:.3g} (keys {test.sparse_keys} of"
            f" {len(test.normalized)} in the window), p {show_p(test.p_value)} against {n_references}"
            f" innocent references (t with {test.df} df)"
        )


WINDOW_TEST = WindowTest()
