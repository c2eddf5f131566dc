"""Evidence reports: signed attribution reports that anyone with the public key can check offline.

A signed report is an in-toto Statement v1 in a DSSE envelope (auditor.signing): the
subject is the suspect model (its manifest digest, auditor.identity), the predicate is
the whole attribution report. Verification checks, in order and with no network:

1. the Ed25519 signature over the envelope (nothing unsigned is interpreted);
2. the predicate is a report of a supported schema version;
3. the statement's subject digest is the digest the report gives for the suspect;
3b. the verdict follows from the report's own numbers (`report.recompute_verdict`);
   Before that, every count and cross-reference the report can check alone
   (`report.inconsistencies`): key results against `keyset.num_keys`, seeds per key,
   no seed twice, no reference that is the source or another reference by either digest.
4. with the keyset folder: every key image re-hashes to keys.json, the keyset digest
   is the report's, the report agrees with the keyset (`report.keyset_inconsistencies`:
   its source, each result's key, prompt and audit seeds derived again from the nonce, no
   reference that is the keyset's base or a panel model), and, when the report cites a
   pre-registered commitment, the folder's commitment.json opens to that digest and is
   the commitment cited.
5. with the suspect's regenerations too (`audit --save-images DIR`): every image the
   report cites that the folder holds hashes to its name and gives, against its key
   image, the distance the report records for that key and seed (`check_regenerations`).
   The distance is a float64 function of lossless PNG pixels, so it is recomputed, not
   estimated; images the folder lacks are counted, not assumed.

A failed check is a VerificationError (exit 1); unreadable or malformed input is a
BadInputError (exit 2): "this is not evidence of anything" versus "this is not what
you said it was".
"""

from __future__ import annotations

import base64
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.commitment import COMMITMENT_FILE
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError, VerificationError
from auditor.fileio import sha256_bytes
from auditor.report import AttributionReport, parse_report

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- signing


def report_statement(report: AttributionReport) -> dict[str, Any]:
    """The in-toto Statement over the suspect whose predicate is the report."""
    from auditor.signing import make_statement

    digest = report.suspect.digest
    if not digest:
        raise BadInputError(
            f"suspect {report.suspect.name!r}: the report records no digest for it; a signed report must "
            "pin the suspect by its sha256 manifest digest (see auditor.identity)"
        )
    try:
        return make_statement([(report.suspect.name, digest)], report.model_dump(mode="json"))
    except ValueError as exc:
        raise BadInputError(f"suspect {report.suspect.name!r}: {exc}") from None


def write_signed_report(
    report: AttributionReport, private_key_path: str | os.PathLike[str], envelope_path: str | os.PathLike[str]
) -> Path:
    """Sign `report` with the Ed25519 key at `private_key_path`; write the DSSE envelope atomically."""
    from auditor.signing import load_signer, sign_statement, write_envelope

    statement = report_statement(report)
    signer = load_signer(private_key_path)
    try:
        envelope = sign_statement(statement, signer)
    except ValueError as exc:  # e.g. a NaN distance: canonical JSON refuses it
        raise BadInputError(f"report: cannot be signed as canonical JSON ({exc})") from None
    return write_envelope(envelope_path, envelope)


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verified:
    """What `verify_signed_report_details` checked, for the CLI to print."""

    report: AttributionReport
    keyid: str
    checks: tuple[str, ...] = field(default_factory=tuple)


def verify_signed_report(
    envelope_bytes: bytes,
    public_key_path: str | os.PathLike[str],
    keys_dir: str | os.PathLike[str] | None = None,
    source: str = "envelope",
) -> AttributionReport:
    """Verify a signed report (see the module docstring); return the report it attests."""
    return verify_signed_report_details(envelope_bytes, public_key_path, keys_dir, source).report


def verify_signed_report_details(
    envelope_bytes: bytes,
    public_key_path: str | os.PathLike[str],
    keys_dir: str | os.PathLike[str] | None = None,
    source: str = "envelope",
    images_dir: str | os.PathLike[str] | None = None,
) -> Verified:
    from auditor.signing import load_verifier, verify_envelope

    if images_dir is not None and keys_dir is None:
        raise BadInputError("--images: needs --keys (the distances are to the key images)")
    verifier = load_verifier(public_key_path)
    statement = verify_envelope(envelope_bytes, verifier, source=source)
    checks = ["signature"]
    report = parse_report(statement.get("predicate"), f"{source}: signed report")
    checks.append("schema")
    _check_subject(statement, report, source)
    checks.append("subject")
    _check_verdict(report, source)
    checks.append("verdict")
    if keys_dir is not None:
        checks.extend(check_keyset(report, keys_dir))
    if images_dir is not None and keys_dir is not None:
        found, cited = check_regenerations(report, keys_dir, images_dir)
        checks.append(f"distances of {found} of {cited} regenerations")
    return Verified(report=report, keyid=verifier.keyid, checks=tuple(checks))


def check_regenerations(
    report: AttributionReport, keys_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str]
) -> tuple[int, int]:
    """Recompute the distance of every cited regeneration found in `images_dir` to its key image;
    (found, cited). A mismatch is a VerificationError naming the key and seed."""
    from auditor.distance import get_distance
    from auditor.images import decode_png, to_float

    keys = key_pngs(report, keys_dir)
    images = regeneration_pngs(report, images_dir)
    distance = get_distance(report.audit.distance)
    cited = 0
    for result in report.results:
        key = to_float(decode_png(keys[result.key_id], f"key image {result.key_id}"))
        for j, (sha, recorded) in enumerate(zip(result.image_sha256s, result.distances, strict=True)):
            cited += 1
            if sha not in images:
                continue
            again = float(distance(to_float(decode_png(images[sha], f"{sha}.png")), key)[0])
            if not math.isclose(again, recorded, rel_tol=1e-9, abs_tol=1e-12):
                raise VerificationError(
                    f"{images_dir}: key {result.key_id}, seed {j}: the regeneration {sha[:16]}... is at"
                    f" distance {again:.6g} from its key image, the report says {recorded:.6g}"
                )
    return len(images), cited


def _check_subject(statement: dict[str, Any], report: AttributionReport, source: str) -> None:
    expected = report.suspect.digest
    if not expected:
        raise VerificationError(
            f"{source}: the signed report records no suspect digest, so it binds no model"
        )
    found = []
    for entry in statement.get("subject", []):
        digest = entry.get("digest") if isinstance(entry, dict) else None
        sha = digest.get("sha256") if isinstance(digest, dict) else None
        if isinstance(sha, str):
            found.append(sha)
    if expected not in found:
        shown = ", ".join(found) or "none"
        raise VerificationError(
            f"{source}: statement subject sha256 ({shown}) differs from the report's suspect digest {expected}"
        )


def _check_verdict(report: AttributionReport, source: str) -> None:
    """The signed verdict must follow from the signed numbers: a report re-signed with a verdict its
    own distances do not support (by mistake or on purpose) is not evidence of anything."""
    from auditor.report import inconsistencies, recompute_verdict

    problems = inconsistencies(report)
    if problems:
        raise VerificationError(f"{source}: the signed report contradicts itself: {'; '.join(problems)}")
    try:
        again = recompute_verdict(report)
    except ValueError as exc:
        raise VerificationError(f"{source}: the signed numbers do not give a verdict ({exc})") from None
    if not _same_verdict(again, report.verdict):
        raise VerificationError(
            f"{source}: the signed verdict ({report.verdict.verdict}, p = "
            f"{report.verdict.test.p_value if report.verdict.test else 'n/a'}) does not follow from the signed "
            f"distances, which give {again.verdict} (p = {again.test.p_value if again.test else 'n/a'})"
        )


def _same_verdict(a, b) -> bool:
    """Equal labels, counts and reasons; numbers equal to 1e-9 relative (another machine's floating
    point may differ in the last digits; a changed verdict or p-value differs far more).

    A statistic near zero may come out of a cancellation, so it also passes within 1e-12 absolute;
    a p-value never does: 1e-30 and 1e-14 are both "near zero" and say very different things, so
    p-values compare relatively only (any field whose name holds "p_value")."""
    import math

    def close(x, y, probability: bool = False) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k], probability or "p_value" in k) for k in x)
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            return len(x) == len(y) and all(close(u, v, probability) for u, v in zip(x, y, strict=True))
        if isinstance(x, float) or isinstance(y, float):
            return (
                isinstance(x, int | float)
                and isinstance(y, int | float)
                and math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0 if probability else 1e-12)
            )
        return x == y

    return close(a.model_dump(), b.model_dump())


def check_keyset(report: AttributionReport, keys_dir: str | os.PathLike[str]) -> list[str]:
    """Check a keyset folder against the report; return the names of the checks that passed."""
    from auditor.commitment import load_commitment, verify_commitment

    root = Path(keys_dir)
    keyset = _load_keyset_verified(root)
    if keyset.digest != report.keyset.digest:
        raise VerificationError(
            f"{root}: keyset digest {keyset.digest} differs from the report's keyset digest {report.keyset.digest}"
        )
    from auditor.report import keyset_inconsistencies

    problems = keyset_inconsistencies(report, keyset)
    if problems:
        raise VerificationError(f"{root}: the signed report contradicts its keyset: {'; '.join(problems)}")
    checks = ["keyset"]
    cited = report.keyset.commitment
    if cited is not None:
        path = root / COMMITMENT_FILE
        if not path.exists():
            raise BadInputError(
                f"{root}: the report cites keyset commitment {cited[:16]}... but the folder has no "
                f"{COMMITMENT_FILE} (its salt is needed to open the commitment)"
            )
        commitment = load_commitment(path)
        if commitment.commitment != cited:
            raise VerificationError(
                f"{path}: commitment {commitment.commitment} differs from the commitment the report cites {cited}"
            )
        verify_commitment(commitment, keyset.digest)
        checks.append("commitment")
    return checks


# ---------------------------------------------------------------- commitments


def commit_keyset(keys_dir: str | os.PathLike[str]):
    """Verify the keyset at `keys_dir` and write its salted commitment to keys_dir/commitment.json.

    An existing commitment is never replaced: once published, losing its salt would make
    it impossible to open. The file is created whole or not at all (temporary file, then a
    hard link that fails if the target exists, so two concurrent runs cannot both win).
    """
    from auditor.commitment import commit, save_commitment
    from auditor.keys import load_keyset

    root = Path(keys_dir)
    keyset, _ = load_keyset(root)
    target = root / COMMITMENT_FILE
    if os.path.lexists(target):
        raise BadInputError(
            f"{target}: a commitment already exists (refusing to overwrite it: its salt opens the published one)"
        )
    made = commit(keyset.digest)
    tmp = root / f".{COMMITMENT_FILE}.{secrets.token_hex(8)}.new"
    save_commitment(tmp, made)
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise BadInputError(
            f"{target}: a commitment already exists (refusing to overwrite it: its salt opens the published one)"
        ) from None
    except OSError:
        # A file system without hard links: fall back to a rename after the check above.
        if os.path.lexists(target):
            raise BadInputError(f"{target}: a commitment already exists (refusing to overwrite it)") from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return keyset, made


# ---------------------------------------------------------------- reading for display


@dataclass(frozen=True)
class LoadedReport:
    report: AttributionReport
    signed: bool  # read from a DSSE envelope (whose signature was NOT checked)


def read_report_or_envelope(path: str | os.PathLike[str]) -> LoadedReport:
    """A plain report JSON or a DSSE envelope holding one, read without verifying anything."""
    from auditor.signing import parse_envelope

    p = Path(path)
    data_bytes = read_bytes(p, "report or envelope file")
    data = parse_json(data_bytes, str(p))
    if isinstance(data, dict) and {"payload", "payloadType", "signatures"} <= data.keys():
        envelope, _ = parse_envelope(data_bytes, str(p))
        statement = parse_json(envelope.payload, f"{p}: envelope payload")
        if not isinstance(statement, dict) or "predicate" not in statement:
            raise BadInputError(f"{p}: envelope payload is not an in-toto Statement with a predicate")
        return LoadedReport(parse_report(statement["predicate"], f"{p}: envelope predicate"), signed=True)
    return LoadedReport(parse_report(data, str(p)), signed=False)


def _load_keyset_verified(root: Path):
    """The keyset at `root`, every image re-hashed; an image changed since selection is a failed
    verification (exit 1), like a changed prompt, not unreadable input."""
    from auditor.keys import KeyImageMismatch, load_keyset

    try:
        keyset, _ = load_keyset(root)
    except KeyImageMismatch as exc:
        raise VerificationError(str(exc)) from None
    return keyset


def key_pngs(report: AttributionReport, keys_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """key_id -> the key image's PNG bytes, from a keyset folder that must be the report's keyset."""
    root = Path(keys_dir)
    keyset = _load_keyset_verified(root)
    if keyset.digest != report.keyset.digest:
        raise VerificationError(
            f"{root}: keyset digest {keyset.digest} differs from the report's keyset digest {report.keyset.digest}"
        )
    out = {}
    for key in keyset.keys:
        data = read_bytes(root / key.image, "key image")
        if sha256_bytes(data) != key.image_sha256:  # changed since load_keyset hashed it
            raise VerificationError(f"{root / key.image}: sha256 does not match keys.json")
        out[key.id] = data
    return out


def regeneration_pngs(report: AttributionReport, images_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """sha256 -> PNG bytes of the suspect's regenerations the report cites, where present in the folder.

    Files are found by the name the report gives them (`<sha256>.png`) and must hash to
    it; names that are not 64 hex digits are never turned into paths.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise BadInputError(f"{root}: expected a folder of regenerated images (audit --save-images DIR)")
    out = {}
    for result in report.results:
        for sha in result.image_sha256s:
            if not _HEX64.match(sha) or sha in out:
                continue
            path = root / f"{sha}.png"
            if not path.is_file():
                continue
            data = read_bytes(path, "regenerated image")
            if sha256_bytes(data) != sha:
                raise VerificationError(f"{path}: content sha256 {sha256_bytes(data)} differs from its name")
            out[sha] = data
    return out


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
