"""End to end on the tiny SDXL-architecture zoo: the paper's effect must show on SDXL models too.

`t2i-audit demo --family sdxl --preset test`: the SD integration test's world and roles
(16 px, a base, a source that memorizes its 16 private pairs, one infringing suspect at
rho = 1 and one innocent suspect, five innocent references), every model a
StableDiffusionXLPipeline trained by the one trainer with SDXL's added conditioning. The
assertions are a real effect with a stated margin, the model-level verdicts, and the
SDXL-specific records (size conditioning in the keys and reports, the SDXL suspect
exported and re-audited through its four ONNX graphs). Takes minutes on one CPU thread;
set T2I_AUDITOR_CACHE to reuse the zoo between runs.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from t2i_audit import main

pytestmark = pytest.mark.slow

# conf(infringing) - conf(innocent); measured 1.00 on this preset (1.00 vs 0.00; references 0.08-0.33), docs/zoo.md
MARGIN = 0.5


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    cache = Path(os.environ.get("T2I_AUDITOR_CACHE") or tmp_path_factory.mktemp("zoo-cache"))
    out = tmp_path_factory.mktemp("demo-sdxl-out")
    buffer = io.StringIO()
    argv = ["--format", "json", "demo", "--family", "sdxl", "--preset", "test", "--cache", str(cache)]
    with redirect_stdout(buffer):
        code = main([*argv, "--out", str(out)])
    assert code == 0
    result = json.loads(buffer.getvalue())
    result["out"] = str(out)
    return result


def _by_name(demo: dict) -> tuple[dict, dict]:
    by_name = {s["name"]: s for s in demo["suspects"]}
    return by_name["infringing-rho1.0"], by_name["innocent-1"]


def test_the_sdxl_infringer_inherits_the_keys_and_the_innocent_does_not(demo):
    infringing, innocent = _by_name(demo)
    assert demo["family"] == "sdxl"
    assert infringing["conf"] - innocent["conf"] >= MARGIN, (infringing, innocent)
    assert infringing["mean_distance"] < innocent["mean_distance"]


def test_the_model_level_verdicts_are_right_on_sdxl(demo):
    infringing, innocent = _by_name(demo)
    assert infringing["verdict"] == "infringing" and infringing["p_value"] <= 0.01, infringing
    assert innocent["verdict"] == "not_infringing" and innocent["p_value"] > 0.01, innocent
    report = json.loads(Path(infringing["report"]).read_text())
    assert report["verdict"]["n_references"] == 5
    base = json.loads((Path(demo["out"]) / "keys" / "keys.json").read_text())["base"]["digest"]
    assert base not in {r["digest"] for r in report["references"]}


def test_keys_and_reports_record_the_size_conditioning_and_verify(demo, capsys):
    out = Path(demo["out"])
    keys = json.loads((out / "keys" / "keys.json").read_text())
    assert keys["generation"]["original_size"] == [16, 16] and keys["generation"]["target_size"] == [16, 16]
    for suspect in demo["suspects"]:
        report = Path(suspect["report"])
        assert json.loads(report.read_text())["generation"]["crops_coords_top_left"] == [0, 0]
        model = json.loads((Path(suspect["model"]) / "model_index.json").read_text())
        assert model["_class_name"] == "StableDiffusionXLPipeline"
        args = ["verify", str(report.with_suffix(".dsse.json")), "--key", str(out / "demo-owner.pub")]
        assert main([*args, "--keys", str(out / "keys")]) == 0, capsys.readouterr().err


def test_the_sdxl_infringer_through_onnx_reaches_the_torch_hits(demo, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime")
    out = Path(demo["out"])
    infringing, _ = _by_name(demo)
    reference = json.loads(Path(infringing["report"]).read_text())
    bundle = tmp_path / "bundle"
    export = ["export", infringing["model"], "--out", str(bundle), "--batch-sizes", "16"]
    assert main(["--format", "json", *export]) == 0, capsys.readouterr().err
    capsys.readouterr()
    audit = ["audit", "--keys", str(out / "keys"), "--suspect", str(bundle), "--backend", "onnx"]
    audit.append("--allow-inconclusive")  # distances and hits only: the demo's references are not needed
    assert main(["--format", "json", *audit, "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["backend"]["backend"] == "onnx" and again["backend"]["note"] is None
    assert [k["hit"] for k in again["results"]] == [k["hit"] for k in reference["results"]]
    gaps = [
        abs(a["distance"] - b["distance"])
        for a, b in zip(again["results"], reference["results"], strict=True)
    ]
    assert sum(gaps) / len(gaps) < 0.01
