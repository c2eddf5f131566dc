"""The first version's verdict rule, kept as a registered verdict test that may not decide.

v1 reports called a suspect infringing when its hits (keys under delta0) were improbable
under a binomial with the references' pooled hit rate. That treats the keys of one model as
independent trials and the null rate as known, neither of which holds (docs/method.md), so
its false-positive rate is not the stated alpha. It stays registered so the studies score
it beside the shipped test on the same records (the comparison the method's derivation
rests on), and `may_decide` is False: `verify` refuses a report whose verdict it made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy import stats

from auditor.calibration import FLOOR, log_distances, normalize, pooled_scale
from auditor.verdict_test import ModelTest, SeedDistances, binomial_figure, key_minimum, show_p

METHOD = "t2i-auditor.binomial-rule/v1"
TEST_NAME = "exact binomial on hit counts, pooled reference rate (the first version's rule; not a verdict)"


@dataclass(frozen=True)
class _Fitted:
    refs: np.ndarray  # log distances, n x M
    reference_hits: tuple[int, ...]
    delta0: float
    varies: bool = True  # the rule needs no spread (which is why it cannot hold its level)

    def score(self, suspect: SeedDistances) -> ModelTest:
        d = key_minimum(suspect)
        x = log_distances(d)
        n, m = self.refs.shape
        if m != len(x):
            raise ValueError(f"the suspect has {len(x)} keys, the references {m}")
        hits = int(np.sum(d < self.delta0))
        figure = binomial_figure(hits, m, self.reference_hits)
        best = binomial_figure(m, m, self.reference_hits).p_value
        return ModelTest(
            method=METHOD,
            test=TEST_NAME,
            floor=FLOOR,
            sparse_keys=0,
            scale=pooled_scale(self.refs),
            normalized=tuple(float(v) for v in normalize(x, self.refs)),
            statistics={"hits": float(hits)},
            reference_statistics={"hits": tuple(float(h) for h in self.reference_hits)},
            t={},
            df=n - 1,
            p_values={"hits": figure.p_value},
            p_value=figure.p_value,
            min_p_value=best,
            sanity_p_value=1.0,  # the rule has no check of its references
            sanity_reference=0,
        )


@dataclass(frozen=True)
class BinomialRule:
    """v1's rule as an `auditor.verdict_test.VerdictTest` (module docstring)."""

    method: str = METHOD
    title: str = TEST_NAME
    statistics: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({"hits": "hits: keys under delta0"})
    )
    combination: str = "the binomial tail P(X >= hits)"
    may_decide: bool = False
    exceedances: tuple = ()  # not measured per kind of innocent (docs/method.md)

    def fit(self, references: Sequence[SeedDistances], *, delta0: float) -> _Fitted:
        if not references:
            raise ValueError("the binomial rule needs at least one reference")
        minima = [key_minimum(r) for r in references]
        refs = np.stack([log_distances(d) for d in minima])
        hits = tuple(int(np.sum(d < delta0)) for d in minima)
        return _Fitted(refs=refs, reference_hits=hits, delta0=delta0)

    def thresholds(self, test: ModelTest, alpha: float) -> dict[str, float]:
        """The fewest hits whose binomial tail reaches alpha."""
        trials = len(test.normalized)
        ref_hits = [int(h) for h in test.reference_statistics["hits"]]
        p0 = (sum(ref_hits) + 0.5) / (len(ref_hits) * trials + 1.0)
        return {"hits": float(stats.binom.isf(alpha, trials, p0) + 1)}

    def describe(self, test: ModelTest, n_references: int) -> str:
        hits = int(test.statistics["hits"])
        return (
            f"binomial p {show_p(test.p_value)} for {hits} of {len(test.normalized)} keys under delta0,"
            f" against the pooled hit rate of {n_references} references"
        )


BINOMIAL_RULE = BinomialRule()
