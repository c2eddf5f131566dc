"""End to end on an even tinier zoo: the paper's effect must show, not just the plumbing.

Trains a base, a source that memorizes its private set, one infringing suspect
(fine-tuned on the source's generations) and one innocent suspect (the same captions,
real images), then runs the demo pipeline through the CLI. The assertion is a real
effect with a stated margin: the infringing model reproduces the keys and the innocent
one does not. Takes a few minutes on one CPU thread; set T2I_AUDITOR_CACHE to reuse the
zoo between runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from t2i_audit import main

pytestmark = pytest.mark.slow

# conf(infringing) - conf(innocent); measured 0.80 on this preset (0.87 vs 0.07), docs/zoo.md
MARGIN = 0.3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    cache = Path(os.environ.get("T2I_AUDITOR_CACHE") or tmp_path_factory.mktemp("zoo-cache"))
    out = tmp_path_factory.mktemp("demo-out")
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(
            ["--format", "json", "demo", "--preset", "test", "--cache", str(cache), "--out", str(out)]
        )
    assert code == 0
    result = json.loads(buffer.getvalue())
    result["out"] = str(out)
    return result


def test_infringing_model_inherits_the_keys_and_the_innocent_does_not(demo):
    by_name = {s["name"]: s for s in demo["suspects"]}
    infringing = by_name["infringing-rho1.0"]
    innocent = by_name["innocent-1"]
    assert infringing["rho"] == 1.0 and innocent["rho"] == 0.0
    assert infringing["conf"] - innocent["conf"] >= MARGIN, (infringing, innocent)
    assert infringing["mean_distance"] < innocent["mean_distance"]


def test_the_model_level_verdict_accuses_the_infringer_and_clears_the_innocent(demo):
    """Against five innocent references (never the base), at alpha = 0.01."""
    by_name = {s["name"]: s for s in demo["suspects"]}
    infringing, innocent = by_name["infringing-rho1.0"], by_name["innocent-1"]
    assert infringing["verdict"] == "infringing" and infringing["p_value"] <= 0.01, infringing
    assert innocent["verdict"] == "not_infringing" and innocent["p_value"] > 0.01, innocent
    report = json.loads(Path(infringing["report"]).read_text())
    assert report["verdict"]["n_references"] == 5 and report["verdict"]["rule"] == "model_level_test"
    assert report["keyset"]["digest"] == demo["keyset_digest"]
    base = json.loads((Path(demo["out"]) / "keys" / "keys.json").read_text())["base"]["digest"]
    assert base not in {r["digest"] for r in report["references"]}


def test_demo_json_and_reports_are_complete(demo):
    assert demo["num_keys"] >= 10
    assert set(demo["timings"]) >= {"zoo", "keys", "total"}
    for suspect in demo["suspects"]:
        assert {"name", "rho", "conf", "verdict", "mean_distance", "best_distance"} <= set(suspect)
        report = json.loads(Path(suspect["report"]).read_text())
        assert report["summary"]["conf"] == suspect["conf"]
        assert report["keyset"]["digest"] == demo["keyset_digest"]
        assert report["references"], "the demo calibrates against innocent references"


def test_demo_reports_are_signed_and_verify_offline(demo, capsys):
    out = Path(demo["out"])
    for suspect in demo["suspects"]:
        report = Path(suspect["report"])
        envelope = report.with_suffix(".dsse.json")
        args = ["verify", str(envelope), "--key", str(out / "demo-owner.pub"), "--keys", str(out / "keys")]
        assert main(args) == 0, capsys.readouterr().err
        page = report.with_suffix(".html").read_text()
        assert page.count("<img") >= 2 * demo["num_keys"]  # every key beside its regeneration
        assert "http://" not in page and "https://" not in page


def test_the_demo_keyset_verifies_and_reaudits_identically(demo, capsys):
    out = Path(demo["out"])
    suspect = next(s for s in demo["suspects"] if s["rho"] == 1.0)
    report = json.loads(Path(suspect["report"]).read_text())
    capsys.readouterr()
    code = main(["--format", "json", "keys", "digest", str(out / "keys")])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["digest"] == demo["keyset_digest"]
    code = main(
        [
            "--format",
            "json",
            "audit",
            "--keys",
            str(out / "keys"),
            "--suspect",
            suspect["model"],
            "--allow-inconclusive",
        ]
    )
    assert code == 0
    again = json.loads(capsys.readouterr().out)
    assert [k["distance"] for k in again["results"]] == [k["distance"] for k in report["results"]]


def test_engine_backends_reach_the_torch_verdict_on_every_key(demo, tmp_path, capsys):
    """Export the infringing suspect (fp32 and fp16 graphs) and re-audit it through ONNX Runtime.

    The trained model is where parity matters: its key distances straddle delta0, unlike
    a random-weight model's. Through the fp32 graphs every key's hit must match the torch
    audit; through the fp16 graphs the distances must still agree to within 0.01 on
    average, but a key within a few thousandths of delta0 may flip (measured: 1 of 90
    keys on the demo's suspects, docs/benchmarks.md), so hits are not compared there.
    """
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime")
    out = Path(demo["out"])
    suspect = next(s for s in demo["suspects"] if s["rho"] == 1.0)
    reference = json.loads(Path(suspect["report"]).read_text())
    bundle = tmp_path / "bundle"
    export = ["export", suspect["model"], "--out", str(bundle), "--precision", "fp16", "--batch-sizes", "16"]
    assert main(["--format", "json", *export]) == 0, capsys.readouterr().err
    hits = [k["hit"] for k in reference["results"]]
    assert any(hits), "the torch audit found no hit: nothing to match"
    for dtype in ("float32", "float16"):
        capsys.readouterr()
        audit = [
            "audit",
            "--keys",
            str(out / "keys"),
            "--suspect",
            str(bundle),
            "--backend",
            "onnx",
            "--allow-inconclusive",
        ]
        code = main(["--format", "json", *audit, "--dtype", dtype, "--device", "cpu"])
        assert code == 0
        again = json.loads(capsys.readouterr().out)
        assert again["backend"]["backend"] == "onnx" and again["backend"]["dtype"] == dtype
        assert again["backend"]["note"] is None
        pairs = zip(again["results"], reference["results"], strict=True)
        gaps = [abs(a["distance"] - b["distance"]) for a, b in pairs]
        assert sum(gaps) / len(gaps) < 0.01, (dtype, max(gaps))
        if dtype == "float32":
            assert [k["hit"] for k in again["results"]] == hits
            assert again["summary"]["conf"] == reference["summary"]["conf"]
