"""Signed evidence reports end to end through the CLI, with reports built without any model."""

from __future__ import annotations

import base64
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from auditor.audit import AuditResult, KeyResult, audit_seeds, audit_token, with_nonce
from auditor.backends import BackendInfo
from auditor.commitment import load_commitment, verify_commitment
from auditor.config import AuditConfig, GenerationSettings
from auditor.errors import BadInputError
from auditor.evidence import report_statement, verify_signed_report, write_signed_report
from auditor.fileio import sha256_bytes
from auditor.images import encode_png
from auditor.keys import Key, KeySet, ModelRef, SelectionRecord, load_keyset, save_keyset
from auditor.report import REPORT_SCHEMA, AttributionReport, ReferenceResult, SuspectRef, build_report
from auditor.signing import load_signer, load_verifier, serialize_envelope, sign_statement, write_envelope
from t2i_audit import main

torch.set_num_threads(1)  # the CLI's parser imports the zoo, hence torch

NUM_KEYS = 6
SIZE = 32
SUSPECT_DIGEST = sha256_bytes(b"suspect model manifest")
SOURCE_DIGEST = sha256_bytes(b"source model manifest")
# distances of the suspect per key: three hits under delta0 = 0.15
DISTANCES = (0.05, 0.12, 0.31, 0.08, 0.27, 0.4)


# ---------------------------------------------------------------- fixtures (no model anywhere)


def make_keyset(directory: Path, seed: int = 0, prompts: list[str] | None = None) -> KeySet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(NUM_KEYS, SIZE, SIZE, 3), dtype=np.uint8)
    prompts = prompts or [f"a photo of thing number {i}" for i in range(NUM_KEYS)]
    keys = tuple(
        Key(
            id=f"k{i:03d}",
            prompt=prompts[i],
            seed=i,
            selection_seeds=(0, 1, 2, 3),
            image=f"k{i:03d}.png",
            image_sha256=sha256_bytes(encode_png(images[i])),
        )
        for i in range(NUM_KEYS)
    )
    keyset = KeySet(
        strategy="generation",
        source=ModelRef(name="owner-model", digest=SOURCE_DIGEST),
        generation=GenerationSettings(height=SIZE, width=SIZE),
        height=SIZE,
        width=SIZE,
        selection=SelectionRecord(delta0=0.15, distance="l2", requested=NUM_KEYS, candidates=20, eligible=9),
        keys=keys,
    )
    save_keyset(keyset, images, directory)
    return keyset


def make_report(
    keyset: KeySet,
    regenerations: np.ndarray,
    *,
    commitment: str | None = None,
    references: bool = True,
    suspect_digest: str | None = SUSPECT_DIGEST,
    suspect_name: str = "suspect-model",
    distances: tuple[float, ...] = DISTANCES,
) -> AttributionReport:
    config = with_nonce(AuditConfig(seeds_per_key=1), keyset)
    seeds = audit_seeds(config.audit_nonce, keyset.keys, 1, keyset.forbidden_seeds())
    results = tuple(
        KeyResult(
            key_id=key.id,
            prompt=key.prompt,
            seeds=seeds[key.id],
            distances=(d,),
            distance=d,
            hit=d < config.delta0,
            image_sha256s=(sha256_bytes(encode_png(image)),),
        )
        for key, d, image in zip(keyset.keys, distances, regenerations, strict=True)
    )
    hits = sum(k.hit for k in results)
    token = audit_token(keyset, config, keyset.generation)
    result = AuditResult(
        keys=results,
        num_keys=len(results),
        hits=hits,
        conf=hits / len(results),
        mean_distance=float(np.mean(distances)),
        best_distance=float(np.min(distances)),
        backend=BackendInfo(
            backend="torch", device="cpu", dtype="float32", versions={"torch": torch.__version__}
        ),
        generation=keyset.generation,
        config=config,
        token=token,
        seconds=1.5,
    )
    refs = ()
    if references:
        refs = tuple(
            ReferenceResult(
                name=f"innocent-{j}",
                digest=sha256_bytes(f"innocent {j}".encode()),
                hits=j % 2,
                num_keys=NUM_KEYS,
                conf=(j % 2) / NUM_KEYS,
                distances=(
                    dists := tuple(
                        0.2 + 0.03 * i + 0.01 * j * (1 + i % 3) - (0.1 if (j % 2 and i == 0) else 0)
                        for i in range(NUM_KEYS)
                    )
                ),
                seed_distances=tuple((d,) for d in dists),
                audit_token=token,
                backend=result.backend,
            )
            for j in range(5)
        )
    return build_report(
        result=result,
        keyset=keyset,
        suspect=SuspectRef(name=suspect_name, digest=suspect_digest),
        references=refs,
        commitment=commitment,
        created_at="2025-01-02T03:04:05Z",
    )


@dataclass
class World:
    keys_dir: Path
    images_dir: Path
    keyset: KeySet
    regenerations: np.ndarray
    report: AttributionReport
    private: Path
    public: Path
    envelope: Path
    report_path: Path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """main(argv); on failure, stderr must be exactly one line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if code != 0:
        assert len(err.splitlines()) == 1, f"expected one stderr line, got: {err!r}"
        assert err.startswith("t2i-audit: error: "), err
    return code, out, err


def build_world(tmp_path: Path, capsys: pytest.CaptureFixture[str], *, commit: bool = False) -> World:
    keys_dir = tmp_path / "keyset"
    keyset = make_keyset(keys_dir)
    commitment = None
    if commit:
        code, out, _ = run(capsys, "keys", "commit", keys_dir)
        assert code == 0
        commitment = out.strip()
    rng = np.random.default_rng(1)
    regenerations = rng.integers(0, 256, size=(NUM_KEYS, SIZE, SIZE, 3), dtype=np.uint8)
    images_dir = tmp_path / "regenerations"
    images_dir.mkdir()
    for image in regenerations:
        data = encode_png(image)
        (images_dir / f"{sha256_bytes(data)}.png").write_bytes(data)
    report = make_report(keyset, regenerations, commitment=commitment)
    code, _, _ = run(capsys, "keygen", "--out", tmp_path / "owner")
    assert code == 0
    private, public = tmp_path / "owner.key", tmp_path / "owner.pub"
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    envelope = write_signed_report(report, private, tmp_path / "report.dsse.json")
    return World(keys_dir, images_dir, keyset, regenerations, report, private, public, envelope, report_path)


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> World:
    return build_world(tmp_path, capsys)


def _payload(envelope: Path) -> bytes:
    return base64.b64decode(json.loads(envelope.read_bytes())["payload"])


def _with_payload(envelope: Path, payload: bytes, out: Path) -> Path:
    data = json.loads(envelope.read_bytes())
    data["payload"] = base64.b64encode(payload).decode()
    out.write_text(json.dumps(data))
    return out


# ---------------------------------------------------------------- keygen


def test_keygen_mode_keyid_and_no_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "keygen", "--out", tmp_path / "k" / "owner")
    assert code == 0 and err == ""
    private, public = tmp_path / "k" / "owner.key", tmp_path / "k" / "owner.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert out.strip() == load_verifier(public).keyid == load_signer(private).public_key.keyid
    before = private.read_bytes()
    code, _, err = run(capsys, "keygen", "--out", tmp_path / "k" / "owner")
    assert code == 2 and "already exists" in err
    assert private.read_bytes() == before

    code, out, _ = run(capsys, "--format", "json", "keygen", "--out", tmp_path / "j")
    assert code == 0
    doc = json.loads(out)
    assert doc["keyid"] == load_verifier(tmp_path / "j.pub").keyid
    assert Path(doc["private_key"]) == tmp_path / "j.key"


# ---------------------------------------------------------------- sign / verify


def test_round_trip(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", world.envelope, "--key", world.public)
    assert code == 0 and err == ""
    assert out.startswith("valid: ") and len(out.splitlines()) == 1
    assert world.report.verdict.verdict in out and SUSPECT_DIGEST in out

    code, out, _ = run(capsys, "--format", "json", "verify", world.envelope, "--key", world.public)
    assert code == 0
    doc = json.loads(out)
    assert doc["valid"] is True
    assert doc["verdict"] == world.report.verdict.verdict
    assert doc["suspect"] == {"name": "suspect-model", "digest": SUSPECT_DIGEST}
    assert doc["keyset_digest"] == world.keyset.digest
    assert doc["keyid"] == load_verifier(world.public).keyid
    assert doc["checks"] == ["signature", "schema", "subject", "verdict"]

    # the library call returns exactly the report that was signed
    assert verify_signed_report(world.envelope.read_bytes(), world.public) == world.report


def test_statement_shape(world: World) -> None:
    statement = json.loads(_payload(world.envelope))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": "suspect-model", "digest": {"sha256": SUSPECT_DIGEST}}]
    assert statement["predicate"] == world.report.model_dump(mode="json")


def test_tampered_payload_fails(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = _payload(world.envelope)
    verdict = world.report.verdict.verdict.encode()
    assert verdict in payload
    other = b"not_infringing" if verdict != b"not_infringing" else b"infringing"
    tampered = _with_payload(world.envelope, payload.replace(verdict, other, 1), tmp_path / "t.json")
    code, out, err = run(capsys, "verify", tampered, "--key", world.public)
    assert code == 1 and out == "" and "signature verification failed" in err

    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    code, _, _ = run(
        capsys,
        "verify",
        _with_payload(world.envelope, bytes(flipped), tmp_path / "f.json"),
        "--key",
        world.public,
    )
    assert code == 1


def test_wrong_key_fails(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keygen", "--out", tmp_path / "other")[0] == 0
    code, _, err = run(capsys, "verify", world.envelope, "--key", tmp_path / "other.pub")
    assert code == 1 and "not by the given key" in err


def test_unknown_schema_version_in_signed_payload_is_bad_input(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = report_statement(world.report)
    statement["predicate"]["schema_version"] = "t2i-auditor.report/v999"
    path = write_envelope(tmp_path / "v999.json", sign_statement(statement, load_signer(world.private)))
    code, _, err = run(capsys, "verify", path, "--key", world.public)
    assert code == 2 and "v999" in err and REPORT_SCHEMA in err


def test_subject_not_the_suspect_fails(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = report_statement(world.report)
    statement["subject"][0]["digest"]["sha256"] = sha256_bytes(b"some other model")
    path = write_envelope(tmp_path / "subject.json", sign_statement(statement, load_signer(world.private)))
    code, _, err = run(capsys, "verify", path, "--key", world.public)
    assert code == 1 and "subject" in err and SUSPECT_DIGEST in err


def test_bad_inputs_exit_2(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = world.envelope.read_bytes()
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "verify", truncated, "--key", world.public)
    assert code == 2 and "expected JSON" in err

    bad_b64 = tmp_path / "b64.json"
    doc = json.loads(data)
    doc["payload"] = doc["payload"][:-3] + "!!!"
    bad_b64.write_text(json.dumps(doc))
    assert run(capsys, "verify", bad_b64, "--key", world.public)[0] == 2

    code, _, err = run(capsys, "verify", tmp_path / "missing.dsse.json", "--key", world.public)
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "verify", world.envelope, "--key", tmp_path / "missing.pub")
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "verify", tmp_path, "--key", world.public)  # a folder
    assert code == 2

    ec_pub = tmp_path / "ec.pub"
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pub.write_bytes(ec_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    code, _, err = run(capsys, "verify", world.envelope, "--key", ec_pub)
    assert code == 2 and "Ed25519" in err
    code, _, err = run(capsys, "verify", world.envelope, "--key", world.private)  # the private half
    assert code == 2 and "private key" in err

    code, _, err = run(capsys, "verify", world.envelope)  # --key is required
    assert code == 2


def test_signing_refuses_suspect_without_digest(world: World, tmp_path: Path) -> None:
    report = make_report(world.keyset, world.regenerations, suspect_digest=None)
    with pytest.raises(BadInputError, match="no digest"):
        write_signed_report(report, world.private, tmp_path / "x.dsse.json")
    assert not (tmp_path / "x.dsse.json").exists()


# ---------------------------------------------------------------- keyset and commitment


def test_commit_then_verify_with_keyset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = build_world(tmp_path, capsys, commit=True)
    commitment = load_commitment(w.keys_dir / "commitment.json")
    assert w.report.keyset.commitment == commitment.commitment
    verify_commitment(commitment, w.keyset.digest)

    code, out, _ = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 0 and "commitment opened" in out
    code, out, _ = run(
        capsys, "--format", "json", "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir
    )
    assert json.loads(out)["checks"] == ["signature", "schema", "subject", "verdict", "keyset", "commitment"]

    # never overwrite a commitment: its salt opens the published hex
    before = (w.keys_dir / "commitment.json").read_bytes()
    code, _, err = run(capsys, "keys", "commit", w.keys_dir)
    assert code == 2 and "already exists" in err
    assert (w.keys_dir / "commitment.json").read_bytes() == before

    # a key image edited after the report: a failed verification (exit 1), like a changed prompt
    image = w.keys_dir / w.keyset.keys[2].image
    pixels = np.array(load_keyset(w.keys_dir)[1][2])
    pixels[0, 0, 0] ^= 0xFF
    image.write_bytes(encode_png(pixels))
    code, _, err = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 1 and "sha256 does not match" in err
    # ... and so is one replaced by a bomb (hashed before it is decoded), or by a folder
    from hostile_server import png_bomb_header

    image.write_bytes(png_bomb_header())
    code, _, err = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 1 and "sha256 does not match" in err
    image.unlink()
    image.mkdir()
    code, _, err = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 2 and "is a folder" in err  # unreadable: nothing to verify


def test_keys_commit_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyset = make_keyset(tmp_path / "ks")
    code, out, _ = run(capsys, "--format", "json", "keys", "commit", tmp_path / "ks")
    assert code == 0
    doc = json.loads(out)
    assert doc["keyset_digest"] == keyset.digest
    assert doc["commitment"] == load_commitment(tmp_path / "ks" / "commitment.json").commitment
    assert "salt" not in doc  # revealed with the keyset, not published with the commitment
    assert not [p for p in (tmp_path / "ks").iterdir() if p.name.startswith(".")]  # no temp file left
    code, _, err = run(capsys, "keys", "commit", tmp_path / "nothing")
    assert code == 2 and "keys.json" in err


def test_commitment_mismatch_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = build_world(tmp_path, capsys, commit=True)
    wrong = make_report(w.keyset, w.regenerations, commitment=sha256_bytes(b"not the published commitment"))
    envelope = write_signed_report(wrong, w.private, tmp_path / "wrong.dsse.json")
    code, _, err = run(capsys, "verify", envelope, "--key", w.public)
    assert code == 0  # the signature itself is fine ...
    code, _, err = run(capsys, "verify", envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 1 and "commitment" in err  # ... but the keyset folder does not back it

    # a commitment file that does not open to the keyset (salt edited) also fails
    doc = json.loads((w.keys_dir / "commitment.json").read_text())
    doc["salt"] = "00" * 32
    (w.keys_dir / "commitment.json").write_text(json.dumps(doc))
    code, _, err = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 1 and "does not open" in err

    # the report cites a commitment, the folder has none to open it with
    (w.keys_dir / "commitment.json").unlink()
    code, _, err = run(capsys, "verify", w.envelope, "--key", w.public, "--keys", w.keys_dir)
    assert code == 2 and "commitment.json" in err


def test_other_keyset_fails(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keyset(tmp_path / "other", seed=7)
    code, _, err = run(capsys, "verify", world.envelope, "--key", world.public, "--keys", tmp_path / "other")
    assert code == 1 and "keyset digest" in err and world.keyset.digest in err


# ---------------------------------------------------------------- report show


def test_report_show_plain_and_envelope(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", "show", world.report_path)
    assert code == 0 and "suspect-model" in out and world.report.verdict.verdict in out
    assert "UNVERIFIED" not in out
    code, out, _ = run(capsys, "report", "show", world.envelope)
    assert code == 0 and "UNVERIFIED" in out and "t2i-audit verify" in out

    code, out, _ = run(capsys, "--format", "json", "report", "show", world.envelope)
    doc = json.loads(out)
    assert doc["signed_envelope"] is True and doc["verified"] is False
    assert doc["report"] == world.report.model_dump(mode="json")


def test_report_show_bad_inputs(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "report", "show", tmp_path / "nope.json")[0] == 2
    doc = world.report.model_dump(mode="json")
    doc["schema_version"] = "t2i-auditor.report/v0"
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert run(capsys, "report", "show", tmp_path / "old.json")[0] == 2
    assert run(capsys, "report", "show", world.report_path, "--keys", world.keys_dir)[0] == 2  # needs --html
    make_keyset(tmp_path / "other", seed=3)
    code, _, err = run(
        capsys,
        "report",
        "show",
        world.report_path,
        "--html",
        tmp_path / "p.html",
        "--keys",
        tmp_path / "other",
    )
    assert code == 1 and "keyset digest" in err
    assert not (tmp_path / "p.html").exists()


_RESOURCE = re.compile(r"""\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?([^"'\s>]*)""", re.IGNORECASE)


def test_report_show_html_page(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page_path = tmp_path / "out" / "evidence.html"
    code, out, _ = run(
        capsys,
        "report",
        "show",
        world.envelope,
        "--html",
        page_path,
        "--keys",
        world.keys_dir,
        "--images",
        world.images_dir,
    )
    assert code == 0 and "evidence page written" in out
    page = page_path.read_text(encoding="utf-8")
    report = world.report

    assert page.count('class="key-row"') == NUM_KEYS
    for key in report.results:
        assert f'id="{key.key_id}"' in page and key.prompt in page
    # every key image and every regeneration, plus the histogram and the model-level strip plot
    images = re.findall(r"<img\b[^>]*>", page)
    assert len(images) == 2 * NUM_KEYS + 2
    for key in world.keyset.keys:
        png = (world.keys_dir / key.image).read_bytes()
        assert base64.b64encode(png).decode() in page
    for result in report.results:
        png = (world.images_dir / f"{result.image_sha256s[0]}.png").read_bytes()
        assert base64.b64encode(png).decode() in page
    assert "image-rendering: pixelated" in page

    # the verdict with its rule and numbers, identities, settings
    test = report.verdict.test
    assert test is not None
    for text in (
        report.verdict.verdict,
        format(test.p_value, ".4g"),
        *(format(p, ".4g") for p in test.p_values.values()),
        format(test.min_p_value, ".4g"),
        format(report.verdict.binomial.p0, ".4g"),
        "not the verdict",
    ):
        assert text in page
    for digest in (SUSPECT_DIGEST, SOURCE_DIGEST, report.keyset.digest):
        assert digest in page
    assert "WITHOUT verifying" in page

    # self-contained: nothing external, anywhere
    assert "http://" not in page and "https://" not in page
    assert "//" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page).replace("://", "")
    targets = _RESOURCE.findall(page)
    assert len(targets) >= 2 * NUM_KEYS + 1
    for target in targets:
        assert target.startswith(("data:image/png;base64,", "#")), target
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page.lower()


def test_html_escapes_report_text(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_dir = tmp_path / "evil-keys"
    evil = '<script>alert("x")</script> & <img src=https://example.com/x.png>'
    keyset = make_keyset(keys_dir, prompts=[evil] + [f"p{i}" for i in range(1, NUM_KEYS)])
    report = make_report(keyset, world.regenerations, suspect_name='<b onmouseover="x">model</b>')
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(report.model_dump(mode="json")))
    code, _, _ = run(capsys, "report", "show", path, "--html", tmp_path / "evil.html")
    assert code == 0
    page = (tmp_path / "evil.html").read_text(encoding="utf-8")
    assert "<script>" not in page and 'onmouseover="x"' not in page
    assert "&lt;script&gt;" in page and "&lt;b onmouseover=&quot;x&quot;&gt;" in page
    assert len(re.findall(r"<img\b", page)) == 2  # histogram and strip plot: the prompt's tag is text
    assert page.count('class="key-row"') == NUM_KEYS


def test_report_show_images_missing_and_tampered(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = world.images_dir / f"{world.report.results[0].image_sha256s[0]}.png"
    first.unlink()
    code, _, _ = run(
        capsys,
        "report",
        "show",
        world.report_path,
        "--html",
        tmp_path / "a.html",
        "--images",
        world.images_dir,
    )
    assert code == 0
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<img\b", page)) == NUM_KEYS - 1 + 2 and "not available" in page

    second = world.images_dir / f"{world.report.results[1].image_sha256s[0]}.png"
    second.write_bytes(encode_png(np.zeros((SIZE, SIZE, 3), np.uint8)))
    code, _, err = run(
        capsys,
        "report",
        "show",
        world.report_path,
        "--html",
        tmp_path / "b.html",
        "--images",
        world.images_dir,
    )
    assert code == 1 and second.name in err


def test_envelope_bytes_are_deterministic(world: World, tmp_path: Path) -> None:
    again = write_signed_report(world.report, world.private, tmp_path / "again.dsse.json")
    assert again.read_bytes() == world.envelope.read_bytes()
    assert world.envelope.read_bytes() == serialize_envelope(json.loads(world.envelope.read_bytes()))


def _doctor(report: AttributionReport, change: str) -> AttributionReport:
    data = report.model_dump(mode="json")
    if change == "reason":
        data["verdict"]["reason"] = "the suspect copied every key"
    elif change == "summary":
        data["summary"]["conf"] = 0.9
        data["summary"]["hits"] = 5
    elif change == "key-distance":
        data["results"][3]["distance"] = 0.01
    elif change == "reference-token":
        data["references"][0]["audit_token"] = "f" * 64
    elif change == "audit-token":
        data["audit_token"] = "f" * 64
    elif change == "verdict":
        data["verdict"]["verdict"] = (
            "infringing" if report.verdict.verdict != "infringing" else "not_infringing"
        )
    elif change == "p-value":
        data["verdict"]["test"]["p_value"] = 1e-9
    elif change == "method":
        data["verdict"]["test"]["method"] = "t2i-auditor.model-test/v0"
    elif change == "num-keys":
        data["keyset"]["num_keys"] = 99
    elif change == "twin-references":
        data["references"][1]["digest"] = data["references"][0]["digest"]
    elif change == "twin-references-by-content":
        for ref in data["references"][:2]:
            ref["content_digest"] = "c" * 64
    elif change == "reference-is-source":
        data["references"][2]["digest"] = SOURCE_DIGEST
    elif change == "reference-conf":
        data["references"][0]["conf"] = 0.5
    elif change == "binomial":
        data["verdict"]["binomial"]["p_value"] = 1e-30
    elif change == "seed-count":
        data["results"][0]["seeds"].append(7)
    elif change == "seed-twice":
        data["results"][1]["seeds"] = data["results"][0]["seeds"]
    # with the keyset only: each of these agrees with everything else in the report
    elif change == "prompt":
        data["results"][0]["prompt"] = "a photo of something else"
    elif change == "seed":
        data["results"][2]["seeds"] = [123456789]
    elif change == "source":
        data["source"]["name"] = "someone-elses-model"
    elif change == "key-id":
        data["results"][0]["key_id"] = "k999"
    return AttributionReport.model_validate(data)


@pytest.mark.parametrize(
    "change",
    [
        *("reason", "summary", "key-distance", "reference-token", "audit-token", "verdict", "p-value"),
        *("method", "num-keys", "twin-references", "twin-references-by-content", "reference-is-source"),
        *("binomial", "seed-count", "seed-twice", "reference-conf"),
    ],
)
def test_a_re_signed_report_whose_numbers_contradict_each_other_fails(world, capsys, tmp_path, change):
    """Signed with the owner's own key, yet not evidence: verify recomputes and cross-checks it (exit 1)."""
    doctored = _doctor(world.report, change)
    envelope = write_signed_report(doctored, world.private, tmp_path / f"{change}.dsse.json")
    code, _, err = run(capsys, "verify", envelope, "--key", world.public)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


@pytest.mark.parametrize("change", ["prompt", "seed", "source", "key-id"])
def test_a_re_signed_report_that_contradicts_its_keyset_fails_with_the_keyset(
    world, capsys, tmp_path, change
):
    """Consistent in itself, so it verifies without the keyset; the keyset shows what it changed."""
    doctored = _doctor(world.report, change)
    envelope = write_signed_report(doctored, world.private, tmp_path / f"{change}.dsse.json")
    code, _, err = run(capsys, "verify", envelope, "--key", world.public)
    assert code == 0, err
    code, _, err = run(capsys, "verify", envelope, "--key", world.public, "--keys", world.keys_dir)
    assert code == 1, err
    assert "contradicts its keyset" in err, err


def test_a_reference_that_is_the_keysets_base_fails_with_the_keyset(tmp_path, capsys):
    world = build_world(tmp_path / "plain", capsys)
    base = ModelRef(name="base", digest=world.report.references[0].digest)
    keyset = world.keyset.model_copy(update={"base": base})
    keys_dir = tmp_path / "keys-with-base"
    save_keyset(keyset, load_keyset(world.keys_dir)[1], keys_dir)
    report = make_report(keyset, world.regenerations)
    envelope = write_signed_report(report, world.private, tmp_path / "base.dsse.json")
    code, _, err = run(capsys, "verify", envelope, "--key", world.public, "--keys", keys_dir)
    assert code == 1 and "reference innocent-0: is the keyset's base model" in err, err


def test_p_values_compare_relatively_however_small():
    from auditor.evidence import _same_verdict
    from auditor.report import Verdict

    keyset_free = Verdict(verdict="infringing", reason="r", alpha=0.01, min_references=5, n_references=5)
    figure = {"hits": 20, "trials": 30, "p0": 0.03, "assumption": "a"}

    def with_p(p: float) -> Verdict:
        return keyset_free.model_copy(update={"binomial": {**figure, "p_value": p}})

    assert _same_verdict(with_p(1e-14), with_p(1e-14 * (1 + 1e-12)))
    assert not _same_verdict(with_p(1e-14), with_p(1e-30))  # both within 1e-12 of zero


def test_verify_recomputes_the_distances_of_the_regenerations_at_hand(world, capsys, tmp_path):
    """The fixture's distances are made up: the images say otherwise. Its true distances verify."""
    from auditor.distance import normalized_l2
    from auditor.images import to_float

    argv = ("verify", world.envelope, "--key", world.public, "--keys", world.keys_dir, "--images")
    code, _, err = run(capsys, *argv, world.images_dir)
    assert code == 1 and "key k000, seed 0: the regeneration" in err, err
    keys = load_keyset(world.keys_dir)[1]
    true = tuple(float(d) for d in normalized_l2(to_float(world.regenerations), to_float(keys)))
    honest = write_signed_report(
        make_report(world.keyset, world.regenerations, distances=true),
        world.private,
        tmp_path / "h.dsse.json",
    )
    code, out, err = run(capsys, "--format", "json", "verify", honest, *argv[2:], world.images_dir)
    assert code == 0, err
    assert "distances of 6 of 6 regenerations" in json.loads(out)["checks"], out
    (world.images_dir / next(world.images_dir.iterdir()).name).unlink()  # one image missing: counted
    code, out, _ = run(capsys, "--format", "json", "verify", honest, *argv[2:], world.images_dir)
    assert code == 0 and "distances of 5 of 6 regenerations" in json.loads(out)["checks"]
    code, _, err = run(capsys, "verify", honest, "--key", world.public, "--images", world.images_dir)
    assert code == 2 and "needs --keys" in err
