"""End to end on the tiny SDXL-architecture zoo: the paper's effect must show on SDXL models too.

`t2i-audit demo --family sdxl --preset test`: the SD integration test's world and roles
(16 px, a base, a source that memorizes its 16 private pairs, one infringing suspect at
rho = 1 and one innocent suspect, five innocent references), every model a
StableDiffusionXLPipeline trained by the one trainer with SDXL's added conditioning. The
assertions are a real effect against the world's innocent models, the model-level verdicts, and the
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

# A rho = 1 copy reproduces nearly every key: conf 1.00 in every run measured (docs/zoo.md).
COPY_CONF = 0.9


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


def test_the_sdxl_infringer_inherits_the_keys_and_no_innocent_model_does(demo):
    """The instance-level effect, measured against the world's innocent population (the innocent
    suspect and the five references), not against one innocent model: in this 16 px world an
    innocent fine-tune's own conf moved from 0.00 to 0.42, 0.47 and 0.57 between runs and floating-point paths
    (docs/zoo.md), while the copy stayed at 1.00 and closer than every innocent model."""
    infringing, innocent = _by_name(demo)
    assert demo["family"] == "sdxl"
    report = json.loads(Path(infringing["report"]).read_text())
    innocents = {"innocent suspect": (innocent["conf"], innocent["mean_distance"])} | {
        r["name"]: (r["conf"], sum(r["distances"]) / len(r["distances"])) for r in report["references"]
    }
    assert len(innocents) == 6
    assert infringing["conf"] >= COPY_CONF, infringing
    assert all(infringing["conf"] > conf for conf, _ in innocents.values()), (infringing, innocents)
    assert all(infringing["mean_distance"] < d for _, d in innocents.values()), (infringing, innocents)


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
