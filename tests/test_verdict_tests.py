"""Every registered verdict test, through the one protocol (auditor.verdict_test).

In the manner of scikit-learn's common metric tests: each test in `VERDICT_TESTS` runs the same
invariance checks, and a test that is not shipped (a toy, registered for the test only) goes
through the report, `verify`'s recomputation, the HTML page, the figures, the terminal view and
the calibration study's rows without any of them naming its statistic.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from auditor.calibration import log_distances, normalize, pooled_scale
from auditor.report import inconsistencies, make_verdict, parse_report, recompute_verdict
from auditor.verdict_test import ModelTest, decide, key_minimum
from auditor.verdict_tests import DEFAULT, VERDICT_TESTS, shown, verdict_test

GOLDEN = Path(__file__).parent / "golden" / "report.json"
M = 30
ALL = sorted(VERDICT_TESTS.values(), key=lambda t: t.method)


def _world(seed: int = 0, n: int = 8):
    rng = np.random.default_rng(seed)
    keys = rng.normal(math.log(0.25), 0.3, M)

    def model(shift: float = 0.0):  # per key, per audit seed
        return np.exp(keys[:, None] + shift + rng.normal(0, 0.18, (M, 4)))

    return rng, keys, [model(rng.normal(0, 0.05)) for _ in range(n)], model


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_the_table_is_keyed_by_each_tests_method(test):
    assert VERDICT_TESTS[test.method] is test and verdict_test(test.method) is test
    assert test.statistics and test.title and test.combination


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_a_record_holds_exactly_the_tests_statistics_and_a_probability(test):
    _, _, refs, model = _world()
    record = test.fit(refs, delta0=0.15).score(model())
    assert record.method == test.method
    names = set(test.statistics)
    assert set(record.statistics) == set(record.p_values) == set(record.reference_statistics) == names
    assert all(len(v) == len(refs) for v in record.reference_statistics.values())
    assert 0.0 <= record.p_value <= 1.0 and 0.0 <= record.min_p_value <= 1.0
    assert len(record.normalized) == M
    assert shown(record)[0] == tuple(test.statistics)
    assert set(test.thresholds(record, 0.01)) <= names
    assert str(len(refs)) in test.describe(record, len(refs))


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_the_order_of_the_keys_does_not_matter(test):
    _, _, refs, model = _world(1)
    suspect = model()
    order = np.random.default_rng(5).permutation(M)
    a = test.fit(refs, delta0=0.15).score(suspect)
    b = test.fit([r[order] for r in refs], delta0=0.15).score(suspect[order])
    assert math.isclose(a.p_value, b.p_value, rel_tol=1e-9)
    assert a.statistics == pytest.approx(b.statistics, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_a_copy_of_every_key_is_at_least_as_significant_as_an_innocent(test):
    _, _, refs, model = _world(2)
    fitted = test.fit(refs, delta0=0.15)
    copy = fitted.score(np.full((M, 4), 0.02))
    assert copy.p_value <= fitted.score(model()).p_value
    assert copy.p_value <= 0.01


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_fitting_once_scores_like_fitting_each_time(test):
    """The studies fit once per reference set and score many suspects: the same records."""
    _, _, refs, model = _world(3)
    fitted = test.fit(refs, delta0=0.15)
    for suspect in (model(), model(0.3), np.full((M, 4), 0.05)):
        assert fitted.score(suspect) == test.fit(refs, delta0=0.15).score(suspect)


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_a_suspect_with_other_keys_is_refused(test):
    _, _, refs, model = _world(4)
    with pytest.raises(ValueError, match="keys"):
        test.fit(refs, delta0=0.15).score(model()[:-1])


@pytest.mark.parametrize("test", ALL, ids=lambda t: t.method)
def test_an_exceedance_names_a_case_measured_above_its_alpha(test):
    """What a report's caution states must be a measured excess: a rate over its alpha, on a real
    count of models and references, from a named world."""
    for e in test.exceedances:
        assert e.case and e.world
        assert 0.0 < e.alpha < e.rate <= 1.0 and e.references >= 3 and e.models >= 1


def test_the_default_decides_and_the_first_versions_rule_may_not():
    assert DEFAULT.may_decide
    assert [t.method for t in ALL if not t.may_decide] == ["t2i-auditor.binomial-rule/v1"]


def test_an_unknown_method_is_named_with_the_known_ones():
    with pytest.raises(KeyError, match="model-test/v1"):
        verdict_test("t2i-auditor.model-test/v0")


def _golden():
    """The golden report (its volatile fields given valid values): real distances, five references."""
    document = json.loads(GOLDEN.read_text())
    document["created_at"] = "2026-01-01T00:00:00Z"
    document["summary"]["seconds"] = 0.0
    return parse_report(document, str(GOLDEN))


def _remade(report, test):
    distances = tuple(k.distances for k in report.results)
    verdict = make_verdict(distances, report.references, report.audit, report.verdict.alpha, test)
    return report.model_copy(update={"verdict": verdict})


def test_a_report_whose_verdict_the_binomial_rule_made_is_refused():
    report = _remade(_golden(), VERDICT_TESTS["t2i-auditor.binomial-rule/v1"])
    assert report.verdict.test.method == "t2i-auditor.binomial-rule/v1"
    assert any("binomial-rule/v1" in p and "model-test/v1" in p for p in inconsistencies(report))


# ---------------------------------------------------------------- a new test plugs in


@dataclass(frozen=True)
class _Fitted:
    refs: np.ndarray
    null: np.ndarray
    varies: bool = True

    def score(self, suspect) -> ModelTest:
        x = log_distances(key_minimum(suspect))
        if len(x) != self.refs.shape[1]:
            raise ValueError("other keys")
        z = normalize(x, self.refs)
        value = -float(z.mean())
        n = len(self.null)
        t = (value - self.null.mean()) / (self.null.std(ddof=1) * math.sqrt(1 + 1 / n))
        p = float(stats.t.sf(t, n - 1))
        return ModelTest(
            method=MeanZ.method,
            test=MeanZ.title,
            floor=0.01,
            sparse_keys=0,
            scale=pooled_scale(self.refs),
            normalized=tuple(float(v) for v in z),
            statistics={"mean": value},
            reference_statistics={"mean": tuple(float(v) for v in self.null)},
            t={"mean": float(t)},
            df=n - 1,
            p_values={"mean": p},
            p_value=p,
            min_p_value=0.0,
            sanity_p_value=1.0,
            sanity_reference=0,
        )


@dataclass(frozen=True)
class MeanZ:
    """A toy test: minus the mean z, as a prediction t-test on its leave-one-out null."""

    method: str = "test.mean-z/v1"
    title: str = "mean z (a toy registered by the tests)"
    statistics: MappingProxyType = field(default_factory=lambda: MappingProxyType({"mean": "mean: -mean z"}))
    combination: str = "p of the mean"
    may_decide: bool = True
    exceedances: tuple = ()  # not measured per kind of innocent

    def fit(self, references, *, delta0):
        refs = np.stack([log_distances(key_minimum(r)) for r in references])
        null = np.array([-normalize(refs[r], np.delete(refs, r, axis=0)).mean() for r in range(len(refs))])
        return _Fitted(refs, null)

    def thresholds(self, test, alpha):
        values = np.asarray(test.reference_statistics["mean"])
        n = len(values)
        return {
            "mean": float(
                values.mean() + stats.t.isf(alpha, n - 1) * values.std(ddof=1) * math.sqrt(1 + 1 / n)
            )
        }

    def describe(self, test, n_references):
        return f"mean p = {test.p_value:.3g} against {n_references} innocent references"


def test_a_new_test_plugs_in_without_editing_the_report_views_or_studies(monkeypatch):
    from auditor.figures import strip_plot_png
    from auditor.reproduction.calibration_study import verdicts
    from auditor.reproduction.calibration_worlds import smoke
    from auditor.views import print_report_summary, render_report_html

    toy = MeanZ()
    monkeypatch.setitem(VERDICT_TESTS, toy.method, toy)
    report = _remade(_golden(), toy)
    assert report.verdict.test.method == toy.method and "mean p" in report.verdict.reason
    assert inconsistencies(report) == []
    assert recompute_verdict(report) == report.verdict

    page = render_report_html(report)
    assert "mean statistic" in page and "p of the mean" in page and "mean (leave-one-out)" in page
    assert "sparse" not in page
    png = strip_plot_png(report)
    assert png is not None and png.startswith(b"\x89PNG")
    console = Console(file=io.StringIO(), width=200)
    print_report_summary(report, console)
    assert "mean" in console.file.getvalue()

    from record_factory import noise_records

    study = smoke()
    records = noise_records(study)
    rows = verdicts(study, records, test=toy)
    assert rows and all(r["test"] == toy.method and "p_mean" in r for r in rows)


def test_decide_gates_a_plugged_in_test_like_the_shipped_one():
    """Too few references is inconclusive whichever test decides."""
    _, _, refs, model = _world(6, n=4)
    decision = decide(model(), refs, test=MeanZ(), alpha=0.01, min_references=5, delta0=0.15)
    assert decision.verdict == "inconclusive" and "min_references" in decision.reason


def test_a_hostile_record_is_shown_escaped_and_without_a_crash():
    """A report's test block is read before `verify` says anything of it: unknown statistics, markup
    in their names and empty reference lists are shown as typed, never obeyed, never a traceback."""
    from auditor.views import print_report_summary, render_report_html

    report = _golden()
    block = report.verdict.test.model_copy(
        update={
            "method": "x.unknown/v9",
            "statistics": {"[red]bold[/red]": 1.0, "empty": 2.0},
            "p_values": {"[red]bold[/red]": 0.5, "empty": 0.5},
            "reference_statistics": {"[red]bold[/red]": (0.1, 0.2), "empty": ()},
            "t": {},
        }
    )
    report = report.model_copy(update={"verdict": report.verdict.model_copy(update={"test": block})})
    assert shown(block) == (("[red]bold[/red]",), "combined as 'x.unknown/v9' states")
    console = Console(file=io.StringIO(), width=300)
    print_report_summary(report, console)
    assert "[red]bold[/red] 1.00" in console.file.getvalue()
    page = render_report_html(report)
    assert "[red]bold[/red] statistic" in page and "<script" not in page
    assert any("x.unknown/v9" in p for p in inconsistencies(report))


def test_a_report_naming_an_unknown_distance_contradicts_itself_not_a_crash():
    report = _golden()
    report = report.model_copy(update={"audit": report.audit.model_copy(update={"distance": "nope"})})
    assert any("audit.distance" in p and "'nope'" in p for p in inconsistencies(report))


@pytest.mark.parametrize(
    ("method", "table"),
    [
        ("t2i-auditor.window-test/v3", "holdout-rescore-v3.md"),
        ("t2i-auditor.window-test/v2", "confirm-rescore-1000-sets.md"),
    ],
)
def test_a_tests_exceedances_are_its_confirming_rescores_groups_above_alpha(method, table):
    """The cautions reports print are the committed rescore's own rows: every innocent group over
    alpha = 0.01 with 8 references (aggregates and the references' recipe aside), rate and models."""
    text = (Path(__file__).parent.parent / "docs" / "studies" / table).read_text()
    section = text.split("## alpha = 0.01")[1].split("## alpha")[0]
    above = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 5 or cells[0] != "8" or cells[2] != "0":
            continue
        if cells[1].startswith(("all ", "infringing")) or cells[1] == "reference recipe":
            continue
        if float(cells[4]) > 0.01:
            above.append((float(cells[4]), int(cells[3])))
    test = verdict_test(method)
    assert sorted(above) == sorted((e.rate, e.models) for e in test.exceedances)
    assert {(e.alpha, e.references) for e in test.exceedances} == {(0.01, 8)}
