"""The verdict (v3): v2's window statistic, read against a null simulated key by key from the references.

Why (docs/method.md derives each step; docs/reproduction.md has the measurements). v2 read its
window statistic against the n references' own leave-one-out values with a t of n - 1
degrees of freedom: a scale estimated from eight numbers, so the threshold sat about three
of their sds out, and a copy of a quarter of the keys was caught two times in three (the
confirmation world, 8 references). But most of the statistic's innocent spread is not the
model effect that only n models can measure: it is key-by-model scatter, of which the
references hold n values per key, M (n - 1) degrees of freedom in all. So v3 builds the
null from that:

1. **Per key, the min over its audit seeds, and a noisier model matched on its far keys.**
   x_k = min_j log(max(d_kj, FLOOR)), as the report shows. The min rewards a model whose
   generations vary more from seed to seed (another sampler, fewer steps, half precision),
   so a suspect noisier than the references is brought to their seed noise as v2 brings it
   (`auditor.window_test.min_noise_matched`: moved away by the min's extra drift, its spread
   shrunk by the min's extra variance; never moved closer). What changed is where its noise is
   read: v2 took the median over all keys of the within-key variance of the log distances,
   and the confirmation world showed that training on the source's images makes a model
   noisier on most keys (so v2's guard moved infringers away, the more the more they copied).
   v3 reads it on the suspect's farther half of keys (ranked by its centered min values),
   where a partial copy does not reach, and the references' target the same way. On both
   design worlds that kept the sampling-noise innocents at or under alpha and restored most
   of the power v2's guard cost; a simulated sampler with twice the references' seed noise
   is still flagged more often than alpha (docs/method.md has the figures).
2. **The statistic** is v2's: T = -mean of sorted(matched(x - mean_r x_r))[lo:hi], the keys
   ranked from just past the closest 10% to the closest 35%.
3. **The references, decomposed.** Each reference's centered values e_rk = x_rk - mean_r x_rk
   are a model effect a_r = mean_k e_rk plus a per-key residual u_rk. Per key the residuals'
   variance s_k^2 (n - 1 df) is moderated across keys in the manner of limma (Smyth 2004):
   the keys' variances are taken as draws from a scaled inverse chi-square whose prior df d0
   and scale s0^2 are fitted to the s_k^2 by moments of log s_k^2; each key's posterior
   variance is (d0 s0^2 + (n - 1) s_k^2) / (d0 + n - 1), and its predictive a Student t with
   d0 + n - 1 df (normal when the keys' variances do not differ more than sampling says).
   The model effect's variance sigma_a^2 = var(a_r) - mean_k s_k^2 / M is known to n - 1 df
   only, so each simulated draw takes var(a_r) from its posterior, var(a_r) (n - 1) / chi^2_(n-1),
   before subtracting (never below 0).
4. **The null, simulated.** A suspect's centered value at key k under the null is its own
   model effect plus its own residual minus the references' mean of both: variance
   (sigma_a^2 + s_k^2)(1 + 1/n). `DRAWS` suspects are drawn so, from a stream seeded with a
   constant (`uniforms`: the p-value is a function of the distances alone, and `verify`
   recomputes it, under any numpy),
   and T of each is computed as the suspect's is (no matching: a draw has the references'
   noise by construction); p = (1 + #{T_b >= T}) / (DRAWS + 1). The references' values enter
   unmatched, so a noisier one among them widens the null a little: the cautious side.
   Over many reference sets of the two design worlds this held the level at or under alpha
   with 5, 8 and 16 references (docs/reproduction.md); the confirmation of its figures is a
   third world's.

The references' leave-one-out statistics (v2's, scaled as a suspect's) are still computed: the
report shows them beside the suspect's, and the shared outlier gate reads them.
Pure functions of numbers; argument errors are programming errors (ValueError).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
from scipy import optimize, special

from auditor.calibration import FLOOR, pooled_scale, reference_outlier
from auditor.verdict_test import Exceedance, ModelTest, SeedDistances, seed_matrix, show_p
from auditor.window_test import (
    HIGH,
    LOW,
    WINDOW_STATISTICS,
    WINDOW_TEST,
    min_noise_matched,
    min_spread,
    window,
    window_record,
)

METHOD = "t2i-auditor.window-test/v3"
TEST_NAME = (
    "model-level window test (keys ranked 10-35% closest, min over seeds, a noisier model matched on"
    " its far keys) against a null simulated key by key from the references"
)
DRAWS = 20_000  # simulated innocent suspects per fit: the p-value's Monte Carlo sd at 0.01 is 0.0007
NULL_SEED = 20_250_603  # a constant: the same draws for every fit, so a p-value is reproducible
STILL = 1e-9  # references whose log distances spread less than this are one model (float noise)
QUANTILE_LEVELS = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)  # upper tails kept for the figures


def uniforms(count: int) -> np.ndarray:
    """`count` uniforms in (0, 1) from PCG64 seeded with `NULL_SEED`, read from its raw 64-bit stream
    (stable across numpy versions, unlike a Generator's distribution methods) and turned into
    normals, t and chi-square draws by scipy's inverse distribution functions: a report verified
    under another numpy draws the same null."""
    raw = np.random.PCG64(NULL_SEED).random_raw(count)
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


# The innocent groups its confirming world flagged above alpha = 0.01 with 8 references (200 reference
# sets; docs/studies/holdout-rescore-v3.md, where 13 keys qualified). Groups of 4-5 models rest on one
# or two of them; the sampling variants are the 30 same-recipe models served otherwise.
_HOLDOUT = "holdout world, 13 keys"
V3_EXCEEDANCES: tuple[Exceedance, ...] = (
    Exceedance(
        "a fine-tune on half as many images as the references (the study's: 32, not 64)",
        0.187,
        0.01,
        8,
        5,
        _HOLDOUT,
    ),
    Exceedance(
        "a fine-tune on data of another style (flatter lighting than the references')",
        0.037,
        0.01,
        8,
        4,
        _HOLDOUT,
    ),
    Exceedance("a suspect served with a stochastic sampler (DDIM eta 1)", 0.012, 0.01, 8, 30, _HOLDOUT),
    Exceedance("a suspect served with a stochastic sampler (Euler ancestral)", 0.012, 0.01, 8, 30, _HOLDOUT),
)
_MAX_HALF_DF = 1e10  # a prior df beyond 2e10 is the normal limit


def moderated_variances(variances: np.ndarray, df: int) -> tuple[np.ndarray, float]:
    """Per-key variances (each on `df` degrees of freedom) moderated toward their common scale:
    (posterior variances, their predictive df), by limma's moments of log s^2 (Smyth 2004). df is
    inf when the keys' variances spread no more than sampling alone would make them."""
    if df < 1 or variances.size < 2 or np.any(variances <= 0):
        raise ValueError("moderation needs positive variances of at least two keys, each on df >= 1")
    e = np.log(variances) - special.digamma(df / 2) + math.log(df / 2)
    excess = float(np.var(e, ddof=1)) - float(special.polygamma(1, df / 2))
    if excess <= float(special.polygamma(1, _MAX_HALF_DF)):  # no spread beyond sampling's
        return np.full_like(variances, math.exp(float(e.mean()))), math.inf
    half = optimize.brentq(lambda x: float(special.polygamma(1, x)) - excess, 1e-8, _MAX_HALF_DF)
    d0 = 2.0 * half
    s0 = math.exp(float(e.mean()) + float(special.digamma(half)) - math.log(half))
    return (d0 * s0 + df * variances) / (d0 + df), d0 + df


def key_logs(distances: SeedDistances) -> np.ndarray:
    """One model's log(max(d, FLOOR)), keys x seeds."""
    return np.log(np.maximum(seed_matrix(distances), FLOOR))


def all_noise(logs: np.ndarray, centered: np.ndarray) -> float:
    """v2's reading: the median over every key of the within-key variance (a design candidate's)."""
    return float(np.median(np.var(logs, axis=1, ddof=1))) if logs.shape[1] > 1 else 0.0


def far_noise(logs: np.ndarray, centered: np.ndarray) -> float:
    """A model's seed noise where a partial copy does not reach: the median, over its farther half of
    keys (ranked by `centered`, its min values centered on the references), of the within-key
    variance of its log distances; 0 with one seed per key."""
    if logs.shape[1] < 2:
        return 0.0
    far = np.argsort(centered, kind="stable")[len(centered) // 2 :]
    return float(np.median(np.var(logs[far], axis=1, ddof=1)))


# Where a model's seed noise is read (module docstring, step 1): v3's "far", and v2's "all".
NOISE_READINGS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"far": far_noise, "all": all_noise}


@dataclass(frozen=True)
class Matching:
    """The references' seed noise a suspect is matched to (module docstring, step 1)."""

    target: float  # the references' mean seed noise, read as the suspect's is
    interaction: float  # their per-key spread about a model's own mean that seed noise does not explain
    seeds: int
    reading: str = "far"  # a NOISE_READINGS row

    def __call__(self, logs: np.ndarray, centered: np.ndarray) -> np.ndarray:
        noise = NOISE_READINGS[self.reading](logs, centered)
        return min_noise_matched(centered, noise, self.target, self.interaction, self.seeds)


def matching(logs: Sequence[np.ndarray], means: np.ndarray, reading: str = "far") -> Matching:
    """The references' seed noise (read where the suspect's is) and the spread it does not explain,
    as v2 measures the latter."""
    values = np.stack([x.min(axis=1) for x in logs])
    n, seeds = len(values), logs[0].shape[1]
    target = float(np.mean([NOISE_READINGS[reading](x, x.min(axis=1) - means) for x in logs]))
    centered = values - values.mean(axis=0)
    spread = float(np.var(centered, axis=1, ddof=1).mean()) * n / (n - 1)
    return Matching(
        target=target, interaction=max(spread - min_spread(seeds) * target, 0.0), seeds=seeds, reading=reading
    )


@dataclass(frozen=True)
class KeyNull:
    """What the references say an innocent suspect's centered values look like, simulated."""

    means: np.ndarray  # per key, the references' mean value
    draws: np.ndarray  # DRAWS window statistics of simulated innocent suspects, sorted
    lo: int
    hi: int
    key_df: float  # the per-key draws' df (inf: normal)

    def p(self, value: float) -> float:
        above = len(self.draws) - int(np.searchsorted(self.draws, value, side="left"))
        return (1 + above) / (len(self.draws) + 1)

    @functools.cached_property
    def quantiles(self) -> tuple[float, ...]:
        """The draws' upper quantiles at QUANTILE_LEVELS (once per fit: every record carries them)."""
        return tuple(float(v) for v in np.quantile(self.draws, [1.0 - q for q in QUANTILE_LEVELS]))


def _moderated(residuals: np.ndarray, variances: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
    """v3's per-key draws: the moderated predictive, t with d0 + n - 1 df (normal at inf)."""
    n = residuals.shape[0]
    posterior, df = moderated_variances(variances, n - 1)
    draws = special.ndtri(u) if math.isinf(df) else special.stdtrit(df, u)
    return draws * np.sqrt(posterior * (1.0 + 1.0 / n)), df


def _normal(residuals: np.ndarray, variances: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
    n = residuals.shape[0]
    return special.ndtri(u) * np.sqrt(variances * (1.0 + 1.0 / n)), math.inf


def _student(residuals: np.ndarray, variances: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
    n = residuals.shape[0]
    return special.stdtrit(n - 1, u) * np.sqrt(variances * (1.0 + 1.0 / n)), float(n - 1)


def _resampled(residuals: np.ndarray, variances: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
    """Each key's draw one of the references' own residuals there, widened from their (n - 1) / n
    spread about their mean to a suspect's (n + 1) / n."""
    n, m = residuals.shape
    rows = np.minimum((u * n).astype(np.int64), n - 1)
    return residuals[rows, np.arange(m)[None, :]] * math.sqrt((n + 1) / (n - 1)), float(n - 1)


# How the per-key part of a simulated innocent is drawn from the references' residuals (n x M) and
# per-key variances, given uniforms (draws x M): (draws, the predictive's df). v3's is "moderated";
# the others are the design candidates' (`reproduction.candidates`, docs/method.md).
KEY_DRAWS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, float]]] = {
    "moderated": _moderated,
    "normal": _normal,
    "student": _student,
    "resampled": _resampled,
}


def simulate_null(
    values: np.ndarray, lo: int, hi: int, draws: int = DRAWS, key_draws: str = "moderated"
) -> KeyNull:
    """The null of the window statistic for a suspect judged against these references' values
    (n x M), module docstring steps 3 and 4."""
    n, m = values.shape
    means = values.mean(axis=0)
    centered = values - means
    effects = centered.mean(axis=1)
    residuals = centered - effects[:, None]
    variances = np.maximum(np.var(residuals, axis=0, ddof=1), 1e-12)
    u = uniforms(draws * (m + 2)).reshape(draws, m + 2)
    per_key, key_df = KEY_DRAWS[key_draws](residuals, variances, u[:, :m])
    total = float(np.var(effects, ddof=1)) * (n - 1) / special.chdtri(n - 1, u[:, m])
    effect_var = np.maximum(total - float(variances.mean()) / m, 0.0)
    inflate = 1.0 + 1.0 / n  # the references' mean is estimated too
    simulated = special.ndtri(u[:, m + 1])[:, None] * np.sqrt(effect_var * inflate)[:, None] + per_key
    statistics = -np.sort(simulated, axis=1)[:, lo:hi].mean(axis=1)
    return KeyNull(means=means, draws=np.sort(statistics), lo=lo, hi=hi, key_df=key_df)


@dataclass(frozen=True)
class _Fitted:
    test: KeyNullWindowTest
    values: np.ndarray
    null: KeyNull
    matching: Matching
    loo: np.ndarray  # each reference's window statistic, leave-one-out (shown, and the outlier gate)
    seeds: int
    min_p_value: float
    sanity: tuple[float, int]
    varies: bool

    def score(self, suspect: SeedDistances) -> ModelTest:
        logs = key_logs(suspect)
        n, m = self.values.shape
        if m != logs.shape[0]:
            raise ValueError(f"the suspect has {logs.shape[0]} keys, the references {m}")
        if logs.shape[1] != self.seeds:
            raise ValueError(f"the suspect has {logs.shape[1]} seeds per key, the references {self.seeds}")
        centered = logs.min(axis=1) - self.null.means
        matched = self.matching(logs, centered) if self.test.match_noise else centered
        value = -float(np.sort(matched)[self.null.lo : self.null.hi].mean())
        sd = float(self.null.draws.std())
        t = (value - float(self.null.draws.mean())) / sd if sd > 0 else 0.0
        return window_record(
            self.test, self.values, centered, value, self.loo, t, self.null.p(value),
            keys=self.null.hi - self.null.lo, min_p_value=self.min_p_value, sanity=self.sanity,
            null_quantiles={"window": self.null.quantiles},
        )  # fmt: skip


@dataclass(frozen=True)
class KeyNullWindowTest:
    """The v3 verdict test (module docstring), as one `auditor.verdict_test.VerdictTest`."""

    method: str = METHOD
    title: str = TEST_NAME
    low: float = LOW
    high: float = HIGH
    draws: int = DRAWS  # fewer only where many fits are simulated and p is read coarsely (the tests)
    # the design candidates' variations (`reproduction.candidates`); v3 is the defaults
    match_noise: bool = True
    noise_reading: str = "far"  # a NOISE_READINGS row
    key_draws: str = "moderated"  # a KEY_DRAWS row
    statistics: MappingProxyType = field(default_factory=lambda: MappingProxyType(WINDOW_STATISTICS))
    combination: str = "the window statistic's p-value against the simulated null"
    may_decide: bool = True
    exceedances: tuple[Exceedance, ...] = V3_EXCEEDANCES

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> _Fitted:
        logs = [key_logs(r) for r in references]
        seeds = {x.shape[1] for x in logs}
        if len(seeds) != 1:
            raise ValueError(f"the references have different numbers of seeds per key: {sorted(seeds)}")
        values = np.stack([x.min(axis=1) for x in logs])
        n, m = values.shape
        if n < 3:
            raise ValueError("the window test needs at least three references")
        lo, hi = window(m, self.low, self.high)
        matched = matching(logs, values.mean(axis=0), self.noise_reading)
        if pooled_scale(values) <= STILL:  # one model several times: no null; `decide` says so
            still = KeyNull(values.mean(axis=0), np.zeros(1), lo, hi, math.inf)
            return _Fitted(
                self, values, still, matched, np.zeros(n), seeds.pop(), 1.0, (1.0, 0), varies=False
            )
        null = simulate_null(values, lo, hi, self.draws, self.key_draws)
        # v2's leave-one-out statistics without noise matching: shown beside the suspect's, and the outlier gate
        loo = replace(WINDOW_TEST, correction="none").fit(references, delta0=delta0).null
        extreme = -float(np.sort(math.log(FLOOR) - null.means)[lo:hi].mean())
        return _Fitted(
            test=self,
            values=values,
            null=null,
            matching=matched,
            loo=loo,
            seeds=seeds.pop(),
            min_p_value=null.p(extreme),
            sanity=reference_outlier(loo[:, None]),
            varies=bool(float(null.draws.std()) > 0),
        )

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        """Where the window statistic reaches alpha: the simulated null's upper quantile, read from the
        record's (interpolated in log alpha between its levels; the nearest level outside them)."""
        levels = np.log(np.array(QUANTILE_LEVELS))
        values = np.asarray(test.null_quantiles.get("window", ()), dtype=float)
        if values.size != len(QUANTILE_LEVELS):
            return {}
        # np.interp needs increasing x: the levels fall, so read them reversed
        return {"window": float(np.interp(math.log(alpha), levels[::-1], values[::-1]))}

    def describe(self, test: ModelTest, n_references: int) -> str:
        return (
            f"window statistic {test.statistics['window']:.3g} (keys {test.sparse_keys} of"
            f" {len(test.normalized)} in the window), p {show_p(test.p_value)} against a null simulated"
            f" from {n_references} innocent references ({self.draws:,} draws)"
        )


KEY_NULL_TEST = KeyNullWindowTest()
