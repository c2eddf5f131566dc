"""The verdict statistics compared on the development world before one was chosen (issue 20).

A statistic is designed on a development world and confirmed once, unchanged, on a world it
never saw. The comparison is itself reproducible: every candidate below is a verdict test
of the one protocol (`auditor.verdict_test.VerdictTest`), under a `candidate.*` method name
no report can carry (`may_decide` False), and

    t2i-audit reproduce --study calibration --rescore docs/studies/dev-distances.csv.gz --test METHOD

scores any of them on the development table, as docs/method.md's comparison did. The
registered tests (`auditor.verdict_tests`) are scored the same way.

- the shipped v1 test (min over seeds, median and tail-asymmetry statistics, Bonferroni);
- the window statistic with the min over seeds and no noise matching (what the review proposed);
- the window statistic with the mean over seeds, without and with noise matching (v2 is the latter);
- windows of other ranks (the lowest 35%, and 10-50%);
- an offline likelihood-ratio score in the manner of LiRA (Carlini et al. 2022): per key, minus
  the log of the Student-t predictive probability that an innocent model comes this close,
  averaged over keys; the same leave-one-out null.

v3 (`auditor.key_null_test`) was designed afterwards on the development and confirmation
tables together; the variations it was chosen from (how the null's per-key part is drawn, and
where a suspect's seed noise is read, or none) are kept here beside it (docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
from scipy import stats

from auditor.calibration import FLOOR, pooled_scale, reference_outlier
from auditor.key_null_test import KEY_NULL_TEST
from auditor.verdict_test import ModelTest, SeedDistances, VerdictTest, show_p
from auditor.window_test import WINDOW_TEST, key_values, noise_matched, prediction_scale


@dataclass(frozen=True)
class _LiraFitted:
    test: LiraTest
    values: np.ndarray
    noises: np.ndarray
    means: np.ndarray
    scale: float  # the per-key predictive scale, S sqrt(1 + 1/n)
    target: float
    interaction: float
    seeds: int
    null: np.ndarray
    spread: float
    varies: bool = True

    def statistic(self, centered: np.ndarray, noise: float) -> float:
        centered = noise_matched(centered, noise, self.target, self.interaction, self.seeds)
        n = len(self.values)
        tail = stats.t.logcdf(centered / self.scale, n - 1)  # log P(an innocent comes this close)
        return float(-np.mean(tail))

    def score(self, suspect: SeedDistances) -> ModelTest:
        x, noise = key_values(suspect, "mean")
        n, m = self.values.shape
        if m != len(x):
            raise ValueError(f"the suspect has {len(x)} keys, the references {m}")
        centered = x - self.means
        value = self.statistic(centered, noise)
        sd = prediction_scale(self.null)
        t = (value - float(self.null.mean())) / sd if sd > 0 else 0.0
        p = float(stats.t.sf(t, n - 1))
        sanity = reference_outlier(self.null[:, None])
        return ModelTest(
            method=self.test.method,
            test=self.test.title,
            floor=FLOOR,
            sparse_keys=m,
            scale=self.spread,
            normalized=tuple(float(v) for v in centered / self.spread),
            statistics={"lira": value},
            reference_statistics={"lira": tuple(float(v) for v in self.null)},
            t={"lira": float(t)},
            df=n - 1,
            p_values={"lira": p},
            p_value=p,
            min_p_value=0.0,
            sanity_p_value=sanity[0],
            sanity_reference=sanity[1],
        )


@dataclass(frozen=True)
class LiraTest:
    """Offline LiRA-style per-key likelihood scores averaged over keys (module docstring)."""

    method: str = "candidate.lira-t/dev"
    title: str = "candidate: mean per-key Student-t log tail (offline LiRA), leave-one-out null"
    statistics: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({"lira": "lira: -mean log predictive tail"})
    )
    combination: str = "the lira statistic's p-value"
    may_decide: bool = False
    exceedances: tuple = ()  # not measured per kind of innocent

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> _LiraFitted:
        pairs = [key_values(r, "mean") for r in references]
        values = np.stack([v for v, _ in pairs])
        noises = np.array([s for _, s in pairs])
        n, m = values.shape
        seeds = np.asarray(references[0]).shape[1]
        spread = pooled_scale(values)
        centered = values - values.mean(axis=0)
        own = float(np.var(centered, axis=1, ddof=1).mean()) * n / (n - 1)
        target = float(noises.mean())
        base = _LiraFitted(
            test=self,
            values=values,
            noises=noises,
            means=values.mean(axis=0),
            scale=spread * math.sqrt(1 + 1 / n) if spread > 0 else 1.0,
            target=target,
            interaction=max(own - target / seeds, 0.0),
            seeds=seeds,
            null=np.zeros(n),
            spread=spread if spread > 0 else 1.0,
            varies=spread > 0,
        )
        c = math.sqrt((n + 1) * (n - 1)) / n
        total = values.sum(axis=0)
        null = np.array(
            [base.statistic(c * (values[r] - (total - values[r]) / (n - 1)), noises[r]) for r in range(n)]
        )
        return replace(base, null=null, varies=bool(spread > 0 and np.std(null) > 0))

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        null = np.asarray(test.reference_statistics["lira"], dtype=float)
        return {"lira": float(null.mean() + stats.t.isf(alpha, len(null) - 1) * prediction_scale(null))}

    def describe(self, test: ModelTest, n_references: int) -> str:
        return f"lira p {show_p(test.p_value)} against {n_references} innocent references"


def _key_null(method: str, title: str, **changes) -> VerdictTest:
    return replace(
        KEY_NULL_TEST, method=method, title=f"candidate: {title}", may_decide=False, exceedances=(), **changes
    )


def _window(method: str, title: str, **changes) -> VerdictTest:
    return replace(
        WINDOW_TEST, method=method, title=f"candidate: {title}", may_decide=False, exceedances=(), **changes
    )


CANDIDATES: dict[str, VerdictTest] = {
    test.method: test
    for test in (
        _window("candidate.window-min/dev", "window 10-35%, min over seeds, no noise correction",
                correction="none"),
        _window("candidate.window-min-shift/dev", "window 10-35%, min over seeds shifted by its seed-noise drift",
                correction="min-shift"),
        _window("candidate.window-min-up/dev", "window 10-35%, min over seeds moved away by any excess drift",
                correction="min-shift-up"),
        _window("candidate.window-mean/dev", "window 10-35%, mean over seeds, no noise correction",
                summary="mean", correction="none"),
        _window("candidate.window-mean-matched/dev", "window 10-35%, mean over seeds, spread matched",
                summary="mean", correction="spread"),
        _window("candidate.window-0-35/dev", "window 0-35%, min over seeds, a noisier model matched", low=0.0),
        _window("candidate.window-10-50/dev", "window 10-50%, min over seeds, a noisier model matched", high=0.5),
        LiraTest(),
        _key_null("candidate.window-keynull-unmatched/v3", "v3's simulated null, no noise matching",
                  match_noise=False),
        _key_null("candidate.window-keynull-all-keys/v3", "v3's simulated null, noise read on every key (v2's)",
                  noise_reading="all"),
        _key_null("candidate.window-keynull-normal/v3", "null with per-key normals, variances as known, no matching",
                  key_draws="normal", match_noise=False),
        _key_null("candidate.window-keynull-student/v3", "null with a t of n - 1 df per key, no matching",
                  key_draws="student", match_noise=False),
        _key_null("candidate.window-keynull-resampled/v3", "null of the references' own residuals per key, no matching",
                  key_draws="resampled", match_noise=False),
    )
}  # fmt: skip


def every_test() -> dict[str, VerdictTest]:
    """The registered tests and the candidates, as the comparison scores them."""
    from auditor.verdict_tests import VERDICT_TESTS

    return {**VERDICT_TESTS, **CANDIDATES}


def compare(table, *, sets: int, reference_counts: tuple[int, ...] = (5, 8, 16)) -> str:
    """One markdown table per reference count: per test, the false-positive rate (mean over sets)
    of each innocent group and the power at each rho, at alpha = 0.01 and 0.05."""
    from auditor.reproduction.calibration_report import _markdown
    from auditor.reproduction.rescore import rescore

    results = {
        method: rescore(table, test, sets=sets, reference_counts=reference_counts)
        for method, test in every_test().items()
    }
    sections = []
    for alpha in (0.01, 0.05):
        for n in reference_counts:
            columns: list[str] = []
            cells: dict[str, dict[str, str]] = {}
            for method, by_alpha in results.items():
                for r in by_alpha[alpha]:
                    if r.n_references != n:
                        continue
                    label = f"{r.group} rho {r.rho:g}" if r.group.startswith("infringing") else r.group
                    if label not in columns:
                        columns.append(label)
                    cells.setdefault(method, {})[label] = f"{r.mean:.3f} [{r.high:.3f}]"
            if not cells:
                continue
            rows = [[method, *(cells[method].get(c, "") for c in columns)] for method in cells]
            sections.append(
                f"### alpha = {alpha:g}, {n} references\n\n" + _markdown(["test", *columns], rows)
            )
    return "\n\n".join(sections)
