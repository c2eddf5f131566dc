"""`t2i-audit batch`: job specs, per-suspect failures, resumption after SIGKILL, --index,
--summarize, signing, multiple-testing corrections and the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.batch import load_job, task_resources
from auditor.errors import BadInputError
from auditor.multitest import adjust, benjamini_hochberg, holm
from t2i_audit import main

GOLDEN = Path(__file__).parent / "golden"


def _job(path: Path, body: str, keys: Path, head: str = "") -> Path:
    path.write_text(
        f"keys: {keys}\ngeneration: {{steps: 2}}\nallow_inconclusive: true\n{head}suspects:\n{body}"
    )
    return path


def _batch(*argv: str) -> int:
    return main(["--format", "json", "--threads", "1", "batch", *argv])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- multiple testing


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(1*0.04, 0.06)=0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 4/1*0.005=0.02, 4/2*0.01=0.02, 4/3*0.03=0.04, 4/4*0.04=0.04; running min from the largest
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # BH's step-up: a larger p can pull smaller ones down (0.045*3/3 < 0.04*3/2)
    assert benjamini_hochberg([0.01, 0.04, 0.045]) == pytest.approx([0.03, 0.045, 0.045])
    assert holm([0.01, 0.04, 0.045]) == pytest.approx([0.03, 0.08, 0.08])
    # caps at 1, ties, one test, none
    assert holm([0.5, 0.5]) == [1.0, 1.0] and benjamini_hochberg([0.5, 0.5]) == [0.5, 0.5]
    assert holm([0.2]) == [0.2] and benjamini_hochberg([0.2]) == [0.2] and holm([]) == []
    assert adjust([0.01, 0.02], "none") == [0.01, 0.02]
    with pytest.raises(ValueError):
        adjust([1.5], "holm")


def test_bh_matches_scipy_and_holm_is_never_below_bh():
    import numpy as np
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=int(rng.integers(1, 12))).tolist()
        assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p, method="bh").tolist())
        assert all(h >= b - 1e-12 for h, b in zip(holm(p), benjamini_hochberg(p), strict=True))
        assert all(h >= q for h, q in zip(holm(p), p, strict=True))


# ---------------------------------------------------------------- job spec


def test_job_spec_errors_name_the_field(keys_dir, tmp_path, capsys):
    bad_top = _job(tmp_path / "a.yaml", "  - {name: s, model: x}\n", keys_dir, head="colour: blue\n")
    assert _batch(str(bad_top), "--out", str(tmp_path / "o")) == 2
    line = _stderr_line(capsys)
    assert "a.yaml" in line and "field 'colour'" in line and "Extra inputs" in line
    bad_threshold = _job(
        tmp_path / "b.yaml", "  - {name: s, model: x}\n", keys_dir, head="thresholds: {delta0: 2}\n"
    )
    assert _batch(str(bad_threshold), "--out", str(tmp_path / "o")) == 2
    assert "field 'thresholds.delta0'" in _stderr_line(capsys)
    missing_keys = _job(tmp_path / "c.yaml", "  - {name: s, model: x}\n", tmp_path / "no-keys")
    assert _batch(str(missing_keys), "--out", str(tmp_path / "o")) == 2
    assert "field 'keys'" in _stderr_line(capsys)
    dup = _job(tmp_path / "d.yaml", "  - {name: s, model: x}\n  - {name: s, model: y}\n", keys_dir)
    with pytest.raises(BadInputError, match=r"field 'suspects.1.name': 's' is already"):
        load_job(dup)
    (tmp_path / "e.yaml").write_text("keys: [unclosed\n")
    assert _batch(str(tmp_path / "e.yaml"), "--out", str(tmp_path / "o")) == 2
    assert "not valid YAML at line" in _stderr_line(capsys)
    missing_ref = _job(
        tmp_path / "f.yaml",
        "  - {name: s, model: x}\n",
        keys_dir,
        head=f"references: [{tmp_path / 'nope'}]\n",
    )
    assert _batch(str(missing_ref), "--out", str(tmp_path / "o")) == 2
    assert "field 'references.0'" in _stderr_line(capsys)
    toml = tmp_path / "g.toml"
    toml.write_text(f'keys = "{keys_dir}"\ncorrection = "bh"\n[[suspects]]\nname = "a"\nmodel = "m"\n')
    job = load_job(toml)
    assert job.spec.correction == "bh" and job.names == ["a"]


def test_bad_suspects_fail_alone_and_the_batch_goes_on(tiny_pipeline, keys_dir, tmp_path, capsys):
    from test_suspects import write_lora

    from auditor.zoo.models import make_unet

    wide = write_lora(make_unet(0, channels=(48, 96)), tmp_path / "wide.safetensors")
    body = (
        f"  - {{name: good, model: {tiny_pipeline}}}\n"
        f"  - {{name: typo, model: {tiny_pipeline}, colour: red}}\n"
        f"  - {{name: missing, model: {tmp_path / 'absent'}}}\n"
        f"  - {{name: refused, model: 'http://127.0.0.1:{_closed_port()}', http: {{retries: 1, backoff_s: 0}}}}\n"
        f"  - {{name: wide-lora, model: {wide}, base: {tiny_pipeline}}}\n"
        f"  - {{name: settings, model: {tiny_pipeline}, generation: {{steps: 0}}}}\n"
    )
    job = _job(tmp_path / "job.yaml", body, keys_dir)
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out)) == 75  # the refused endpoint may pass on retry
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert len(captured.err.strip().splitlines()) == 1 and "5 of 6 suspects failed" in captured.err
    rows = {row["name"]: row for row in summary["suspects"]}
    assert rows["good"]["status"] == "done" and (out / "reports/good.json").is_file()
    expect = {
        "typo": (2, "field 'suspects.1.colour'"),
        "missing": (2, "model not found"),
        "refused": (75, "connection refused"),
        "wide-lora": (2, "does not fit base"),
        "settings": (2, "field 'generation.steps'"),
    }
    for name, (code, text) in expect.items():
        assert rows[name]["status"] == "failed" and rows[name]["exit_code"] == code, rows[name]
        assert text in rows[name]["error"] and rows[name]["error"].startswith(f"suspect '{name}'")
        record = json.loads((out / f"errors/{name}.json").read_text())
        assert record["exit_code"] == code and "\n" not in record["message"]
        assert not (out / f"reports/{name}.json").exists()
    assert summary["complete"] is False and summary["counts"]["failed"] == 5


# ---------------------------------------------------------------- resumption


def test_batch_killed_midway_resumes_without_loss(tiny_pipeline, keys_dir, tmp_path):
    names = ["s0", "s1", "s2", "s3"]
    body = "".join(f"  - {{name: {n}, model: {tiny_pipeline}}}\n" for n in names)
    job = _job(tmp_path / "job.yaml", body, keys_dir, head="thresholds: {batch_size: 1}\n")
    # 20 steps one image at a time: slow enough that the batch is still busy when killed
    job.write_text(job.read_text().replace("{steps: 2}", "{steps: 20}"))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "t2i_audit",
        "--format",
        "json",
        "--threads",
        "1",
        "batch",
        str(job),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / "reports").glob("*.json")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the batch finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    first = sorted(p.name for p in (out / "reports").glob("*.json"))
    assert 1 <= len(first) < len(names)
    for path in (out / "reports").glob("*.json"):
        json.loads(path.read_text())  # every visible report is whole
    kept = {name: (out / "reports" / name).read_bytes() for name in first}
    assert _batch(str(job), "--out", str(out)) == 0
    reports = sorted(p.name for p in (out / "reports").glob("*.json"))
    assert reports == [f"{n}.json" for n in names]  # exactly one report per suspect
    for name, data in kept.items():
        assert (out / "reports" / name).read_bytes() == data  # finished work was kept, not redone
    from auditor.report import load_report

    for n in names:
        assert load_report(out / f"reports/{n}.json").suspect.name == n


# ---------------------------------------------------------------- --index, --summarize, signing


def _refs(models) -> str:
    return "references: [" + ", ".join(str(m) for m in models) + "]\n"


def test_index_mode_exit_codes_idempotence_and_summarize(
    tiny_pipeline, reference_models, keys_dir, tmp_path, capsys, monkeypatch
):
    body = (
        f"  - {{name: a, model: {tiny_pipeline}}}\n"
        f"  - {{name: b, model: {tmp_path / 'absent'}}}\n"
        f"  - {{name: c, model: 'http://127.0.0.1:{_closed_port()}', http: {{retries: 0}}}}\n"
        f"  - {{name: d, model: {tiny_pipeline}}}\n"
    )
    job = _job(tmp_path / "job.yaml", body, keys_dir, head=_refs(reference_models) + "alpha: 0.05\n")
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out), "--index", "0") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "done"
    report = (out / "reports/a.json").read_bytes()
    assert not (out / "summary.json").exists()  # index runs leave the summary to --summarize
    assert _batch(str(job), "--out", str(out), "--index", "0") == 0  # a rerun: skipped, unchanged
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    assert (out / "reports/a.json").read_bytes() == report
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert _batch(str(job), "--out", str(out)) == 2
    assert "model not found" in _stderr_line(capsys)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert _batch(str(job), "--out", str(out)) == 75
    assert "connection refused" in _stderr_line(capsys)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    assert _batch(str(job), "--out", str(out)) == 2
    assert "has 4 suspects" in _stderr_line(capsys)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert _batch(str(job), "--out", str(out), "--summarize") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in summary["suspects"]] == ["done", "failed", "failed", "pending"]
    assert json.loads((out / "summary.json").read_text())["suspects"] == summary["suspects"]
    assert summary["family_size"] == 4 and summary["complete"] is False
    row = summary["suspects"][0]
    # the family counts the three suspects without a report as p = 1: Holm multiplies by 4
    assert row["adjusted_p_value"] == pytest.approx(min(1.0, 4 * row["p_value"]))
    assert len(list((out / "references").glob("*.json"))) == 5  # audited once, reused


def test_summary_corrects_the_report_verdicts(tiny_pipeline, reference_models, keys_dir, tmp_path, capsys):
    """Reports with chosen p-values: the summary's Holm / BH verdicts against hand-computed ones."""
    names = ["w", "x", "y", "z"]
    body = "".join(f"  - {{name: {n}, model: {tiny_pipeline}}}\n" for n in names)
    job = _job(tmp_path / "job.yaml", body, keys_dir, head=_refs(reference_models) + "alpha: 0.05\n")
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out), "--index", "0") == 0
    capsys.readouterr()
    template = json.loads((out / "reports/w.json").read_text())
    for name, p in zip(names, [0.01, 0.04, 0.03, 0.005], strict=True):
        report = json.loads(json.dumps(template))
        report["suspect"]["name"] = name
        report["verdict"]["test"]["p_value"] = p
        report["verdict"]["verdict"] = "infringing"  # each p <= alpha alone
        (out / f"reports/{name}.json").write_text(json.dumps(report))
    assert _batch(str(job), "--out", str(out), "--summarize") == 0
    rows = json.loads(capsys.readouterr().out)["suspects"]
    assert [r["adjusted_p_value"] for r in rows] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [r["corrected_verdict"] for r in rows] == [
        "infringing",
        "not_infringing",
        "not_infringing",
        "infringing",
    ]
    assert [r["verdict"] for r in rows] == ["infringing"] * 4  # the reports' single-test verdicts stay
    job.write_text(job.read_text().replace("alpha: 0.05", "alpha: 0.05\ncorrection: bh"))
    assert _batch(str(job), "--out", str(out), "--summarize") == 0
    rows = json.loads(capsys.readouterr().out)["suspects"]
    assert [r["adjusted_p_value"] for r in rows] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert [r["corrected_verdict"] for r in rows] == ["infringing"] * 4


def test_signed_batch_reports_verify(tiny_pipeline, keys_dir, tmp_path, capsys):
    from auditor.evidence import verify_signed_report
    from auditor.report import load_report

    body = f"  - {{name: a, model: {tiny_pipeline}}}\n"
    job = _job(
        tmp_path / "job.yaml", body, keys_dir, head=f"signing_key: {GOLDEN / 'test-signing-key.pem'}\n"
    )
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out)) == 0
    capsys.readouterr()
    envelope = (out / "reports/a.dsse.json").read_bytes()
    verified = verify_signed_report(envelope, GOLDEN / "test-signing-key.pub", keys_dir)
    assert verified == load_report(out / "reports/a.json")


# ---------------------------------------------------------------- Ray


def test_ray_tasks_take_a_gpu_where_there_are_gpus():
    assert task_resources({"CPU": 16.0, "GPU": 4.0}) == {"num_gpus": 1}
    assert task_resources({"CPU": 2.0}) == {"num_cpus": 1}
    assert task_resources({"CPU": 2.0, "GPU": 0.0}) == {"num_cpus": 1}


def _comparable(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report.pop("created_at")
    report["summary"].pop("seconds")
    return report


def test_ray_executor_gives_the_local_reports(tiny_pipeline, keys_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="ray is optional: pip install 't2i-auditor[ray]'")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    body = f"  - {{name: a, model: {tiny_pipeline}}}\n  - {{name: b, model: {tiny_pipeline}, generation: {{steps: 3}}}}\n"
    head = f"references: [{tiny_pipeline}]\nalpha: 0.05\n"
    job = _job(
        tmp_path / "job.yaml", body + f"  - {{name: bad, model: {tmp_path / 'absent'}}}\n", keys_dir, head
    )
    assert _batch(str(job), "--out", str(tmp_path / "local")) == 2
    local = json.loads(capsys.readouterr().out)
    assert _batch(str(job), "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-cpus", "2") == 2
    remote = json.loads(capsys.readouterr().out)
    for name in ("a", "b"):
        a = json.loads((tmp_path / f"local/reports/{name}.json").read_text())
        b = json.loads((tmp_path / f"ray/reports/{name}.json").read_text())
        assert _comparable(a) == _comparable(b)
    assert json.loads((tmp_path / "ray/errors/bad.json").read_text())["exit_code"] == 2
    strip = ("created_at",)
    assert {k: v for k, v in local.items() if k not in strip} == {
        k: v for k, v in remote.items() if k not in strip
    }
    import ray

    assert not ray.is_initialized()  # the batch stopped the instance it started


def test_a_rerun_never_signs_an_edited_report_and_drops_orphan_envelopes(
    tiny_pipeline, keys_dir, tmp_path, capsys
):
    from auditor.evidence import verify_signed_report

    body = f"  - {{name: a, model: {tiny_pipeline}}}\n  - {{name: b, model: {tiny_pipeline}}}\n"
    job = _job(
        tmp_path / "job.yaml", body, keys_dir, head=f"signing_key: {GOLDEN / 'test-signing-key.pem'}\n"
    )
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out)) == 0
    capsys.readouterr()
    report = json.loads((out / "reports/a.json").read_text())
    report["summary"]["conf"] = 1.0  # an edit, not what the audit measured
    (out / "reports/a.json").write_text(json.dumps(report))
    (out / "reports/a.dsse.json").unlink()  # as if killed between report and envelope
    (out / "reports/b.json").unlink()  # as if killed after... an envelope without its report
    assert _batch(str(job), "--out", str(out)) == 0
    capsys.readouterr()
    for name in ("a", "b"):
        envelope = (out / f"reports/{name}.dsse.json").read_bytes()
        verified = verify_signed_report(envelope, GOLDEN / "test-signing-key.pub", keys_dir)
        assert verified.summary.conf != 1.0
