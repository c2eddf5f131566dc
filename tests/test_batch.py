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
    first, second = load_job(dup).entries  # a duplicate fails alone, under a name of its own
    assert first.name == "s" and second.name == "suspect-1"
    assert "field 'suspects.1.name': 's' is already the name of suspects.0" in second.message
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


def test_suspect_names_map_to_files_injectively(keys_dir, tmp_path):
    """Every pair of names, however chosen, gets files of its own: reserved suffixes, case-only
    differences, unsafe names and the fallback names they get never share an output file."""
    import itertools

    from auditor.batch.job import SuspectEntry

    alphabet = [
        "x",
        "X",
        "x.dsse",
        "X.DSSE",
        "x.transcript",
        "suspect-0",
        "suspect-1",
        "suspect-0-1",
        "../x",
        "",
        7,
    ]
    tried = 0
    for a, b, c in itertools.product(alphabet, repeat=3):
        raw = [{"name": n, "model": "m"} for n in (a, b, c)]
        job = tmp_path / "j.json"
        job.write_text(json.dumps({"keys": str(keys_dir), "suspects": raw}))
        entries = load_job(job).entries
        files: set[str] = set()
        for entry in entries:
            for path in (
                f"reports/{entry.name}.json",
                f"reports/{entry.name}.dsse.json",
                f"errors/{entry.name}.json",
            ):
                assert path.casefold() not in files, (a, b, c)
                files.add(path.casefold())
        if a in ("x", "X", "suspect-0", "suspect-1", "suspect-0-1"):  # the first usable name is kept
            assert isinstance(entries[0], SuspectEntry) and entries[0].name == a
        for n, entry in zip((a, b, c), entries, strict=True):
            assert isinstance(entry, SuspectEntry) == (entry.name == n)
        tried += 1
    print(f"name collisions tried: {tried} triples of {len(alphabet)} names")
    assert tried == len(alphabet) ** 3


def test_colliding_names_fail_alone_and_keep_every_envelope(tiny_pipeline, keys_dir, tmp_path, capsys):
    """`x.dsse` would have overwritten x's envelope; an unsafe name renamed `suspect-N` would have
    failed the whole job beside a suspect really named so. Each now fails alone."""
    from auditor.evidence import verify_signed_report
    from auditor.report import load_report

    body = (
        f"  - {{name: x, model: {tiny_pipeline}}}\n"
        f"  - {{name: x.dsse, model: {tiny_pipeline}}}\n"
        f"  - {{name: ../../etc/x, model: {tiny_pipeline}}}\n"
        f"  - {{name: suspect-2, model: {tiny_pipeline}}}\n"
        f"  - {{name: X, model: {tiny_pipeline}}}\n"
    )
    job = _job(
        tmp_path / "job.yaml", body, keys_dir, head=f"signing_key: {GOLDEN / 'test-signing-key.pem'}\n"
    )
    out = tmp_path / "out"
    assert _batch(str(job), "--out", str(out)) == 2
    captured = capsys.readouterr()
    assert "3 of 5 suspects failed" in captured.err and len(captured.err.strip().splitlines()) == 1
    rows = {row["name"]: row for row in json.loads(captured.out)["suspects"]}
    assert [rows[n]["status"] for n in ("x", "suspect-1", "suspect-2-1", "suspect-2", "suspect-4")] == [
        "done",
        "failed",
        "failed",
        "done",
        "failed",
    ]
    assert "'x.dsse' ends in '.dsse'" in rows["suspect-1"]["error"]
    assert "'X' differs only in case from 'x'" in rows["suspect-4"]["error"]
    assert "suspects.2.name" in rows["suspect-2-1"]["error"]
    for name in ("x", "suspect-2"):
        envelope = (out / f"reports/{name}.dsse.json").read_bytes()
        verified = verify_signed_report(envelope, GOLDEN / "test-signing-key.pub", keys_dir)
        assert verified == load_report(out / f"reports/{name}.json")
    assert sorted(p.name for p in (out / "errors").iterdir()) == [
        "suspect-1.json",
        "suspect-2-1.json",
        "suspect-4.json",
    ]


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


# ---------------------------------------------------------------- one live batch per --out


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_batch_holds_its_out_folder(keys_dir, tmp_path, capsys):
    job = _job(tmp_path / "job.yaml", f"  - {{name: gone, model: {tmp_path / 'absent'}}}\n", keys_dir)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".batch.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": sleeper.pid, "host": socket.gethostname(), "started_at": "2025-01-01T00:00:00Z"}
        lock.write_text(json.dumps(holder))
        assert _batch(str(job), "--out", str(out)) == 2
        line = _stderr_line(capsys)
        assert f"in use by another batch (pid {sleeper.pid} on {socket.gethostname()}" in line
        assert lock.is_file() and not (out / "reports").exists()  # nothing touched
        assert _batch(str(job), "--out", str(out), "--summarize") == 2
        assert "in use by another batch" in _stderr_line(capsys)
    finally:
        sleeper.kill()
        sleeper.wait()
    # another host's lock cannot be checked from here: held, with how to clear it
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started_at": "x"}))
    assert _batch(str(job), "--out", str(out)) == 2
    assert "on elsewhere.example" in (line := _stderr_line(capsys)) and f"remove {lock}" in line


def test_a_stale_lock_is_taken_over_and_every_lock_released(keys_dir, tmp_path, capsys):
    from auditor.batch.lock import _stale

    job = _job(tmp_path / "job.yaml", f"  - {{name: gone, model: {tmp_path / 'absent'}}}\n", keys_dir)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".batch.lock"
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started_at": "then"}))
    assert _batch(str(job), "--out", str(out)) == 2  # the suspect fails (no model): the batch ran
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"took over a stale lock (pid {dead} on" in err[0] and "1 of 1" in err[1]
    assert not lock.exists() and (out / "errors/gone.json").is_file()
    # a reused pid (same number, another start time) is stale too; a live one is not
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    assert _stale(lock, {**me, "start_ticks": -5}) and not _stale(lock, me)
    # released when the batch fails as a whole too
    bad = _job(tmp_path / "bad.yaml", "  - {name: s, model: x}\n", tmp_path / "no-keys")
    assert _batch(str(bad), "--out", str(out)) == 2
    assert "field 'keys'" in _stderr_line(capsys) and not lock.exists()


def test_a_symlinked_out_is_one_line(keys_dir, tmp_path, capsys):
    job = _job(tmp_path / "job.yaml", "  - {name: s, model: x}\n", keys_dir)
    real = tmp_path / "real"
    real.mkdir()
    for link, target in ((tmp_path / "link", real), (tmp_path / "dangling", tmp_path / "nowhere")):
        link.symlink_to(target)
        for extra in ((), ("--index", "0"), ("--summarize",)):
            assert _batch(str(job), "--out", str(link), *extra) == 2
            line = _stderr_line(capsys)
            assert f"--out {link}: is a symbolic link" in line
    (tmp_path / "file").write_text("")
    assert _batch(str(job), "--out", str(tmp_path / "file")) == 2
    assert "exists and is not a folder" in _stderr_line(capsys)
    assert not list(real.iterdir()) and not (tmp_path / "nowhere").exists()
