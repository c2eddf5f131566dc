"""Terminal and HTML views of reports (reports built without any model, see test_evidence)."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from test_evidence import DISTANCES, NUM_KEYS, SIZE, make_keyset, make_report

from auditor.figures import distance_histogram_png
from auditor.verdict_tests import VERDICT_TESTS
from auditor.views import distance_shares, level_caution, print_report_summary, render_report_html

torch.set_num_threads(1)


@pytest.fixture
def keyset(tmp_path: Path):
    return make_keyset(tmp_path / "keys")


def _regens() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(NUM_KEYS, SIZE, SIZE, 3), dtype=np.uint8)


def test_distance_shares_bands() -> None:
    shares = distance_shares([0.05, 0.12, 0.17, 0.3])
    assert shares == {"[0, 0.1)": 0.25, "[0.1, 0.15)": 0.25, "[0.15, 0.2)": 0.25, ">= 0.2": 0.25}
    assert sum(distance_shares(DISTANCES).values()) == pytest.approx(1.0)


def test_summary_prints_names_verbatim(keyset) -> None:
    report = make_report(keyset, _regens(), suspect_name="[red]not-markup[/red]")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_report_summary(report, console)
    text = console.file.getvalue()
    assert "[red]not-markup[/red]" in text
    assert report.verdict.verdict in text and f"{report.summary.hits}/{NUM_KEYS}" in text


def test_histogram_is_a_png_without_software_metadata(keyset) -> None:
    report = make_report(keyset, _regens())
    png = distance_histogram_png(report)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] > 100
        assert "Software" not in image.info
    # without references too (an inconclusive report)
    assert distance_histogram_png(make_report(keyset, _regens(), references=False)).startswith(b"\x89PNG")


def test_a_report_without_references_is_inconclusive_and_says_why(keyset) -> None:
    report = make_report(keyset, _regens(), references=False)
    assert report.verdict.verdict == "inconclusive" and report.verdict.test is None
    page = render_report_html(report, provenance="unit test")
    assert "0 innocent reference models" in page and "No model-level test" in page
    assert page.count('class="key-row"') == NUM_KEYS
    assert len(re.findall(r"<img\b", page)) == 1  # histogram only: no strip plot, no image folders
    assert "Innocent reference models" not in page
    assert "https://" not in page and "http://" not in page


def test_page_with_images_and_missing_ones(keyset) -> None:
    report = make_report(keyset, _regens())
    png = b"\x89PNG fake bytes"
    key_images = {k.key_id: png for k in report.results[:2]}
    page = render_report_html(report, key_images=key_images, regenerations={}, provenance="p")
    assert len(re.findall(r"<img\b", page)) == 2 + 2  # two key images, the histogram, the strip plot
    assert page.count("not available") == 2 * NUM_KEYS - 2
    assert "Innocent reference models" in page and page.count("innocent-") >= 4


def test_discriminator_score_is_shown_in_both_views(keyset) -> None:
    from auditor.report import StatisticalResult

    statistical = StatisticalResult(
        discriminator_sha256="ab" * 32,
        candidate="logreg_C1",
        shadows={"infringing": 8, "innocent": 4},
        score=0.875,
        threshold=0.5,
        decision="infringing",
    )
    report = make_report(keyset, _regens()).model_copy(update={"statistical": statistical})
    page = render_report_html(report, provenance="p")
    assert "discriminator (statistical level)" in page and "0.875" in page and "ab" * 32 in page
    console = Console(file=io.StringIO(), width=250, color_system=None)
    print_report_summary(report, console)
    assert "score 0.875" in console.file.getvalue()
    # Reports without it (every report before --discriminator existed) show nothing of it.
    assert "statistical level" not in render_report_html(make_report(keyset, _regens()), provenance="p")


def test_reduced_precision_reports_carry_a_caution(keyset) -> None:
    report = make_report(keyset, _regens())
    assert report.backend.dtype == "float32"
    assert "rerun in float32" not in render_report_html(report, provenance="p")
    half = report.model_copy(update={"backend": report.backend.model_copy(update={"dtype": "float16"})})
    assert "regenerated in float16" in render_report_html(half, provenance="p")
    console = Console(file=io.StringIO(), width=300, color_system=None)
    print_report_summary(half, console)
    assert "rerun in float32" in console.file.getvalue()


def test_a_report_names_the_innocents_its_test_was_measured_to_flag_above_alpha(keyset) -> None:
    report = make_report(keyset, _regens())
    test = VERDICT_TESTS[report.verdict.test.method]
    caution = level_caution(report)
    assert test.exceedances, "the deciding test's confirmation found kinds above alpha; this test needs one"
    assert all(e.case in caution and f"{e.rate:.3f}" in caution for e in test.exceedances)
    page = render_report_html(report, provenance="p")
    assert all(html.escape(e.case) in page for e in test.exceedances)
    console = Console(file=io.StringIO(), width=400, color_system=None)
    print_report_summary(report, console)
    assert test.exceedances[0].case in console.file.getvalue()
    # A method without such a measurement states none, and an unknown method states nothing of its own.
    for method in ("t2i-auditor.binomial-rule/v1", "a.newer/v9"):
        other = report.verdict.test.model_copy(update={"method": method})
        unmeasured = report.model_copy(update={"verdict": report.verdict.model_copy(update={"test": other})})
        assert level_caution(unmeasured) is None
        assert "flagged more often than alpha" not in render_report_html(unmeasured, provenance="p")


def test_a_simulated_null_is_not_shown_with_degrees_of_freedom(keyset) -> None:
    """v3's p comes from its simulated draws: the page must not present a t distribution's df."""
    report = make_report(keyset, _regens())
    assert report.verdict.test.null_quantiles  # the default test simulates its null
    page = render_report_html(report, provenance="p")
    assert "degrees of freedom" not in page and "share of its draws" in page
    t_test = report.verdict.test.model_copy(update={"null_quantiles": {}})
    older = report.model_copy(update={"verdict": report.verdict.model_copy(update={"test": t_test})})
    page = render_report_html(older, provenance="p")
    assert "degrees of freedom" in page and "share of its draws" not in page
