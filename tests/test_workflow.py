"""One audit, whichever door: `audit` and `batch` agree, sign, and refuse before generating.

Each test here failed on the code before auditor/workflow.py, where the audit was written
three times and the copies disagreed (docs/architecture.md).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from auditor.multitest import benjamini_hochberg, holm
from export.testing import exported_bundle
from t2i_audit import main

GOLDEN = Path(__file__).parent / "golden"


def _json_main(*argv: str) -> tuple[int, dict | None]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["--format", "json", *argv])
    text = buffer.getvalue()
    return code, json.loads(text) if text.strip() else None


def _batch_report(tmp_path: Path, keys_dir: Path, model: Path, extra: str = "") -> dict:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\nruntime: {{backend: onnx, device: cpu}}\n{extra}"
        f"suspects:\n  - name: s\n    model: {model}\n"
    )
    code, summary = _json_main("batch", str(job), "--out", str(tmp_path / "out"))
    assert code == 0, summary
    return json.loads((tmp_path / "out/reports/s.json").read_text())


def test_a_bundle_is_cited_by_its_source_digest_in_audit_and_batch(tiny_pipeline, keys_dir, tmp_path):
    """(a) `audit` cited the source model's digest, `batch` the bundle folder's."""
    from auditor.identity import hash_model

    bundle = exported_bundle(tiny_pipeline, tmp_path / "export")
    code, report = _json_main(
        "audit", "--allow-inconclusive", "--keys", str(keys_dir), "--suspect", str(bundle), "--backend", "onnx", "--device", "cpu",
        "--steps", "2",
    )  # fmt: skip
    assert code == 0
    batch = _batch_report(tmp_path, keys_dir, bundle)
    source = hash_model(tiny_pipeline).digest
    assert report["suspect"]["digest"] == batch["suspect"]["digest"] == source
    assert report["suspect"]["kind"] == batch["suspect"]["kind"] == "engine_bundle"
    assert [k["distances"] for k in report["results"]] == [k["distances"] for k in batch["results"]]


@pytest.fixture()
def served(tiny_pipeline):
    from auditor.backends import TorchGenerator
    from auditor.serve import start_server, stop_server

    server, thread = start_server(TorchGenerator(tiny_pipeline, device="cpu", batch_size=1), port=0)
    try:
        yield server
    finally:
        stop_server(server, thread)


def test_an_http_suspect_audited_with_sign_is_signed_by_its_transcript(served, keys_dir, tmp_path, capsys):
    """(b) `audit --suspect URL --sign` regenerated every key, then failed: no digest to sign."""
    out = tmp_path / "web.json"
    code = main(
        [
            "--format", "json", "audit", "--allow-inconclusive", "--keys", str(keys_dir), "--suspect", served.url, "--steps", "2",
            "--out", str(out), "--sign", str(GOLDEN / "test-signing-key.pem"),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    transcript = json.loads((tmp_path / "web.transcript.json").read_text())
    assert report["suspect"]["kind"] == "http_endpoint"
    assert report["suspect"]["digest"] == transcript["transcript_sha256"]
    assert (
        main(["verify", str(tmp_path / "web.dsse.json"), "--key", str(GOLDEN / "test-signing-key.pub")]) == 0
    )


def test_an_audit_that_cannot_be_signed_fails_before_any_generation(served, keys_dir, tmp_path, capsys):
    served.served = 0
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    code = main(
        ["audit", "--allow-inconclusive", "--keys", str(keys_dir), "--suspect", served.url, "--steps", "2", "--out",
         str(tmp_path / "r.json"), "--sign", str(bad_key)]
    )  # fmt: skip
    assert code == 2 and "not a PEM private key" in capsys.readouterr().err
    assert served.served == 0 and not (tmp_path / "r.json").exists()


def test_batch_jobs_take_a_discriminator(tiny_pipeline, keys_dir, tmp_path):
    """(d) only `audit` took --discriminator."""
    from auditor.discriminator import Discriminator

    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.uniform(0.05, 0.12, (4, 3)), rng.uniform(0.2, 0.3, (4, 3))])
    disc = Discriminator().fit(distances, np.array([1] * 4 + [0] * 4))
    from auditor.keys import load_keyset

    disc.save(tmp_path / "disc.json", keyset_digest=load_keyset(keys_dir)[0].digest)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\ndiscriminator: {tmp_path / 'disc.json'}\n"
        f"suspects:\n  - name: s\n    model: {tiny_pipeline}\n"
    )
    code, _ = _json_main("batch", str(job), "--out", str(tmp_path / "out"))
    assert code == 0
    report = json.loads((tmp_path / "out/reports/s.json").read_text())
    assert report["statistical"]["decision"] in ("infringing", "not_infringing")


def test_a_batch_refuses_a_discriminator_for_other_keys_before_generating(
    tiny_pipeline, keys_dir, tmp_path, capsys
):
    from auditor.discriminator import Discriminator

    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.uniform(0.05, 0.12, (4, 3)), rng.uniform(0.2, 0.3, (4, 3))])
    Discriminator().fit(distances, np.array([1] * 4 + [0] * 4)).save(
        tmp_path / "d.json", keyset_digest="c" * 64
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\ndiscriminator: {tmp_path / 'd.json'}\nsuspects:\n  - name: s\n    model: {tiny_pipeline}\n"
    )
    assert main(["batch", str(job), "--out", str(tmp_path / "out")]) == 2
    assert "fit for keyset cccccccccccccccc" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.json"))


def test_global_options_work_before_and_after_the_subcommand(keys_dir, capsys):
    for argv in (
        ["--format", "json", "keys", "digest", str(keys_dir)],
        ["keys", "digest", str(keys_dir), "--format", "json"],
    ):
        assert main(argv) == 0
        assert len(json.loads(capsys.readouterr().out)["digest"]) == 64
    assert main(["keys", "digest", str(keys_dir), "--threads", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(5))
def test_holm_and_bh_match_statsmodels(seed):
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 4), rng.uniform(0, 1, 9), [0.01, 0.01]])  # ties too
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=0, atol=1e-12
    )


# ---------------------------------------------------------------- references that are really innocent


def _keys_citing(
    tmp_path: Path, *, source: Path, base: Path | None = None, panel: tuple[Path, ...] = ()
) -> Path:
    """A saved random keyset whose recorded source (base, panel) digests are those of real folders."""
    from keyset_factory import make_keyset

    from auditor.identity import hash_model
    from auditor.keys import ModelRef, save_keyset

    def ref(path: Path) -> ModelRef:
        identity = hash_model(path)
        return ModelRef(name=path.parent.name, digest=identity.digest, content_digest=identity.content_digest)

    keyset, images = make_keyset(n=3)
    selection = keyset.selection.model_copy(update={"panel": tuple(ref(p) for p in panel)})
    keyset = keyset.model_copy(
        update={"source": ref(source), "base": ref(base) if base else None, "selection": selection}
    )
    save_keyset(keyset, images, tmp_path / "keys")
    return tmp_path / "keys"


@pytest.mark.parametrize("role", ["source", "base", "panel", "twice"])
def test_references_that_are_not_innocent_fine_tunes_are_refused_before_generating(
    role, tiny_pipeline, reference_models, tmp_path, capsys
):
    source, base, panel = reference_models[0], reference_models[1], reference_models[2]
    keys = _keys_citing(tmp_path, source=source, base=base, panel=(panel,))
    bad = {"source": source, "base": base, "panel": panel, "twice": reference_models[3]}[role]
    refs = [bad, *reference_models[3:]]
    argv = [
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(keys),
        "--suspect",
        str(tiny_pipeline),
        "--steps",
        "1",
    ]
    for ref in refs:
        argv += ["--reference", str(ref)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reference 0" in err or role == "twice"
    expected = {
        "source": "the source model",
        "base": "the base model",
        "panel": "selection-panel model",
        "twice": "the same model as reference 0",
    }[role]
    assert expected in err, err


@pytest.mark.parametrize("how", ["versions", "readme", "metadata"])
@pytest.mark.parametrize("role", ["source", "base", "twice"])
def test_a_resaved_copy_is_refused_as_a_reference_by_its_weights(
    role, how, tiny_pipeline, reference_models, tmp_path, capsys
):
    """The base or the source with other bytes (docs/method.md, "Who may be a reference"), and one
    reference listed again under other bytes, are refused by their content digests."""
    from model_copies import resaved_copy

    source, base = reference_models[0], reference_models[1]
    keys = _keys_citing(tmp_path, source=source, base=base)
    original = {"source": source, "base": base, "twice": reference_models[2]}[role]
    copy = resaved_copy(original, tmp_path / "copy" / original.name, how)
    refs = [*reference_models[2:], copy]
    argv = ["audit", "--allow-inconclusive", "--keys", str(keys), "--suspect", str(tiny_pipeline)]
    for ref in refs:
        argv += ["--reference", str(ref)]
    assert main([*argv, "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"reference {len(refs) - 1}" in err, err
    expected = {
        "source": "has the weights (content digest",
        "base": "has the weights (content digest",
        "twice": "the same model as reference 0",
    }[role]
    assert expected in err and (role == "twice" or f"the {role} model" in err), err


def test_references_audited_with_other_seeds_or_settings_are_refused(
    tiny_pipeline, reference_models, keys_dir
):
    from auditor.backends import SuspectSpec
    from auditor.config import AuditConfig
    from auditor.errors import BadInputError
    from auditor.report import build_report, check_comparable
    from auditor.workflow import Audit, load_keys, resolve_settings

    keys = load_keys(keys_dir)
    settings = resolve_settings(keys.keyset, {"steps": 1})
    specs = tuple(SuspectSpec(model=str(m), device="cpu") for m in reference_models)
    one = Audit(keys=keys, config=AuditConfig(seeds_per_key=1), settings=settings, references=specs)
    other = Audit(keys=keys, config=AuditConfig(seeds_per_key=2), settings=settings, references=specs)
    refs = one.reference_results()
    with pytest.raises(BadInputError, match="audited with other keys, seeds or settings"):
        check_comparable(refs, other.token)
    from auditor.audit import run_audit
    from auditor.backends import open_suspect

    result = run_audit(open_suspect(specs[0]), keys.keyset, keys.images, other.config, settings)
    with pytest.raises(BadInputError, match="reference 'ref-11'|audited with other"):
        build_report(result=result, keyset=keys.keyset, suspect=None, references=refs)  # type: ignore[arg-type]


def test_a_keyset_selected_with_another_panel_than_the_one_named_is_refused(
    tiny_pipeline, reference_models, tmp_path, capsys
):
    keys = _keys_citing(tmp_path, source=reference_models[0], panel=(reference_models[1],))
    argv = [
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(keys),
        "--suspect",
        str(tiny_pipeline),
        "--steps",
        "1",
        "--seeds-per-key",
        "1",
    ]
    assert main([*argv, "--panel", str(reference_models[2])]) == 2
    assert "the keyset was selected with" in capsys.readouterr().err
    assert main(["--format", "json", *argv, "--panel", str(reference_models[1])]) == 0


def test_too_few_references_are_refused_before_generating_unless_allowed(
    served, keys_dir, reference_models, capsys
):
    served.served = 0
    argv = ["audit", "--keys", str(keys_dir), "--suspect", served.url, "--steps", "1", "--seeds-per-key", "1"]
    for ref in reference_models[:3]:
        argv += ["--reference", str(ref)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "3 innocent reference models given, the verdict needs at least 5" in err
        and "--allow-inconclusive" in err
    )
    assert served.served == 0
    assert main(["--format", "json", *argv, "--allow-inconclusive"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["verdict"] == "inconclusive" and "at least 5" in report["verdict"]["reason"]


def test_an_http_endpoint_is_never_a_reference(served, keys_dir, reference_models, tiny_pipeline, capsys):
    argv = ["audit", "--keys", str(keys_dir), "--suspect", str(tiny_pipeline), "--reference", served.url]
    for ref in reference_models[:4]:
        argv += ["--reference", str(ref)]
    assert main(argv) == 2
    assert "an HTTP endpoint cannot be a reference" in capsys.readouterr().err


def test_an_edited_reference_cache_entry_is_audited_again(reference_models, keys_dir, tmp_path):
    from auditor.backends import SuspectSpec
    from auditor.config import AuditConfig
    from auditor.workflow import Audit, load_keys, resolve_settings

    keys = load_keys(keys_dir)
    specs = tuple(SuspectSpec(model=str(m), device="cpu") for m in reference_models)

    def audit() -> Audit:
        return Audit(
            keys=keys,
            config=AuditConfig(seeds_per_key=1),
            settings=resolve_settings(keys.keyset, {"steps": 1}),
            references=specs,
            reference_cache=tmp_path / "refs",
        )

    first = audit().reference_results()
    entry = sorted((tmp_path / "refs").glob("*.json"))[0]
    document = json.loads(entry.read_text())
    document["result"]["distances"] = [0.01] * len(document["result"]["distances"])  # a doctored null
    entry.write_text(json.dumps(document))
    again = audit().reference_results()
    assert again == first  # the edited entry did not enter the audit: it was redone
    assert json.loads(entry.read_text())["result"]["distances"] != [0.01] * len(first[0].distances)


def test_a_models_record_is_one_door_whoever_asks(reference_models, keys_dir, tmp_path, monkeypatch):
    """`Audit.record` is the one per-model record: a reference's entry in a report and a study's
    model are the same object, made once and read back from the cache without generating; a
    model with other weights or another runtime gets its own entry, never another's."""
    from auditor import workflow
    from auditor.backends import SuspectSpec
    from auditor.config import AuditConfig
    from auditor.workflow import Audit, load_keys, resolve_settings

    keys = load_keys(keys_dir)
    specs = tuple(SuspectSpec(model=str(m), device="cpu") for m in reference_models)
    audit = Audit(
        keys=keys,
        config=AuditConfig(seeds_per_key=1),
        settings=resolve_settings(keys.keyset, {"steps": 1}),
        references=specs,
        reference_cache=tmp_path / "records",
    )
    assert audit.cached_record(specs[0], name="m") is None
    made = audit.record(specs[0], name="m")
    assert made.audit_token == audit.token and made.distances == tuple(min(s) for s in made.seed_distances)
    hostile = audit.record(specs[1], name="../../outside/x y")  # a name from a job or shadow-set file
    assert hostile.name == "../../outside/x y" and not (tmp_path.parent / "outside").exists()
    assert len(list((tmp_path / "records").glob("*.json"))) == 2
    monkeypatch.setattr(workflow, "_regenerate", lambda *a, **k: pytest.fail("generated again"))
    assert audit.cached_record(specs[0], name="m") == made == audit.record(specs[0], name="m")
    assert audit.cached_record(specs[1], name="m") is None  # other weights, same name
    assert audit.cached_record(specs[0].model_copy(update={"dtype": "bfloat16"}), name="m") is None


def test_the_report_is_written_before_its_envelope(monkeypatch, tmp_path):
    """A kill between the two writes must leave a report without a signature (a rerun signs it),
    never a signature without its report."""
    from auditor import workflow

    order = []
    monkeypatch.setattr(workflow, "save_report", lambda report, path: order.append("report") or Path(path))
    monkeypatch.setattr(workflow, "sign_report", lambda report, path, key: order.append("envelope"))
    workflow.save_outcome(workflow.Outcome(report=None), tmp_path / "r.json", signing_key=tmp_path / "k")  # type: ignore[arg-type]
    assert order == ["report", "envelope"]
