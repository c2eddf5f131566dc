"""Signed attribution reports: in-toto Statements in DSSE envelopes, Ed25519, offline.

A report may be handed to the other party or to a court years later, so whoever holds
the owner's public key must be able to check it with no network, no transparency log
and no account: a plain Ed25519 key pair and a standard DSSE envelope do that, and any
DSSE verifier (in-toto, sigstore tooling, securesystemslib) accepts what is signed here.

The envelope and key handling are securesystemslib's (`dsse.Envelope`, `CryptoSigner`,
`SSlibKey`), so the pre-authentication encoding is the reference one. Verification
does not trust the envelope's `keyid`: DSSE says it is an unauthenticated hint, so every
signature is tried against the one key the verifier was given.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.exceptions import VerificationError as SSlibVerificationError
from securesystemslib.signer import CryptoSigner, Signature, SSlibKey

from auditor.documents import parse_json
from auditor.errors import BadInputError, VerificationError
from auditor.fileio import atomic_write_bytes, canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://t2i-auditor.dev/attribution-report/v2"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


def make_statement(
    subjects: Sequence[tuple[str, str]], predicate: Mapping[str, Any], predicate_type: str = PREDICATE_TYPE
) -> dict[str, Any]:
    """Build an in-toto Statement v1 over `subjects`, given as (name, sha256 hex) pairs."""
    if not subjects:
        raise ValueError("a statement needs at least one subject")
    subject_list = []
    for name, digest in subjects:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"subject {name!r}: sha256 must be 64 lowercase hex digits, got {digest!r}")
        subject_list.append({"name": name, "digest": {"sha256": digest}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject_list,
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


# --- keys -------------------------------------------------------------------------


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Create an Ed25519 key pair; return its keyid.

    The private key is PKCS8 PEM, unencrypted (batch jobs sign unattended; protect it
    with file permissions or a secret store), and lands with mode 0600 or not at all.
    Existing files are never overwritten: replacing a key would orphan every report
    already signed with it.
    """
    private, public = Path(private_path), Path(public_path)
    if private.resolve() == public.resolve():
        raise BadInputError(f"{private}: private and public key paths must differ")
    for target in (private, public):
        if os.path.lexists(target):
            raise BadInputError(f"{target}: already exists (refusing to overwrite a key file)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(private, private_pem, mode=PRIVATE_KEY_MODE)
    actual = private.stat().st_mode & 0o777
    if actual != PRIVATE_KEY_MODE:
        # e.g. a file system that ignores chmod: a key readable by others is not a secret.
        private.unlink(missing_ok=True)
        raise BadInputError(f"{private}: file system left the private key with mode {actual:o}, expected 600")
    atomic_write_bytes(public, public_pem, mode=PUBLIC_KEY_MODE)
    return SSlibKey.from_crypto(key.public_key()).keyid


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise BadInputError(f"{path}: {what} file not found (expected an Ed25519 PEM key)") from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read {what} file ({exc.strerror})") from exc


def _key_kind(key: object) -> str:
    """Name the key type found, e.g. "RSAPrivateKey", so the message says what is wrong."""
    return type(key).__name__


def load_signer(private_path: str | os.PathLike[str]) -> CryptoSigner:
    """Load an unencrypted Ed25519 PKCS8 PEM private key as a securesystemslib signer."""
    path = Path(private_path)
    data = _read_key_file(path, "private key")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "encrypted"
        raise BadInputError(
            f"{path}: private key is encrypted; expected an unencrypted Ed25519 PEM key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = " (this is a public key)" if b"PUBLIC KEY-----" in data else ""
        raise BadInputError(f"{path}: not a PEM private key{hint}; expected an Ed25519 private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInputError(f"{path}: found a {_key_kind(key)}, expected an Ed25519 private key")
    return CryptoSigner(key)


def load_verifier(public_path: str | os.PathLike[str]) -> SSlibKey:
    """Load an Ed25519 SubjectPublicKeyInfo PEM public key as a securesystemslib key."""
    path = Path(public_path)
    data = _read_key_file(path, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = " (this is a private key; give its public half)" if b"PRIVATE KEY-----" in data else ""
        raise BadInputError(f"{path}: not a PEM public key{hint}; expected an Ed25519 public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BadInputError(f"{path}: found a {_key_kind(key)}, expected an Ed25519 public key")
    return SSlibKey.from_crypto(key)


# --- envelopes --------------------------------------------------------------------


def sign_statement(statement: Mapping[str, Any], signer: CryptoSigner) -> dict[str, Any]:
    """Sign the canonical JSON of `statement`; return the DSSE envelope as a JSON-able dict.

    Canonical JSON makes the payload a function of the statement alone, and Ed25519 is
    deterministic, so the same statement and key always give the same envelope bytes.
    """
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"statement _type must be {STATEMENT_TYPE!r}")
    if not statement.get("subject") or not statement.get("predicateType"):
        raise ValueError("statement needs a non-empty subject list and a predicateType")
    envelope = Envelope(canonical_json(dict(statement)), PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return envelope.to_dict()


def serialize_envelope(envelope: Mapping[str, Any]) -> bytes:
    """The bytes an envelope file holds: sorted keys, indented, trailing newline."""
    return (json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def write_envelope(path: str | os.PathLike[str], envelope: Mapping[str, Any]) -> Path:
    return atomic_write_bytes(path, serialize_envelope(envelope), mode=0o644)


def _b64decode(value: object, field: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{source}: DSSE field {field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        try:  # DSSE allows either alphabet
            return base64.b64decode(value, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadInputError(f"{source}: DSSE field {field} is not valid base64") from exc


def parse_envelope(
    envelope_bytes: bytes, source: str = "envelope"
) -> tuple[Envelope, list[tuple[str, bytes]]]:
    """Check the envelope's shape; return it and its (keyid, signature bytes) pairs.

    Shape errors are bad input (a truncated or edited file, not a forged one), which
    the CLI reports with a different exit code than a signature that does not verify.
    """
    data = parse_json(envelope_bytes, f"{source} (a DSSE envelope)")
    if not isinstance(data, dict):
        raise BadInputError(f"{source}: expected a DSSE envelope JSON object")
    for field in ("payload", "payloadType", "signatures"):
        if field not in data:
            raise BadInputError(f"{source}: DSSE envelope lacks field {field!r}")
    if not isinstance(data["payloadType"], str):
        raise BadInputError(f"{source}: DSSE field payloadType must be a string")
    payload = _b64decode(data["payload"], "payload", source)
    if not isinstance(data["signatures"], list) or not data["signatures"]:
        raise BadInputError(f"{source}: DSSE field signatures must be a non-empty list")
    signatures = []
    for index, entry in enumerate(data["signatures"]):
        field = f"signatures[{index}]"
        if not isinstance(entry, dict) or "sig" not in entry:
            raise BadInputError(f"{source}: DSSE {field} must be an object with a 'sig'")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise BadInputError(f"{source}: DSSE {field}.keyid must be a string")
        signatures.append((keyid, _b64decode(entry["sig"], f"{field}.sig", source)))
    return Envelope(payload, data["payloadType"], {}), signatures


def verify_envelope(
    envelope_bytes: bytes,
    verifier: SSlibKey,
    *,
    predicate_type: str | None = PREDICATE_TYPE,
    source: str = "envelope",
) -> dict[str, Any]:
    """Verify a DSSE envelope with `verifier`; return the signed in-toto Statement.

    The signature is checked before the payload is even parsed, so nothing unsigned is
    interpreted. `predicate_type=None` accepts any predicate type.
    """
    envelope, signatures = parse_envelope(envelope_bytes, source)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationError(
            f"{source}: payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}"
        )
    pae = envelope.pae()
    verified = False
    for _keyid, sig in signatures:
        try:
            # The keyid is the verifier's own: the envelope's is only an unauthenticated hint.
            verifier.verify_signature(Signature(verifier.keyid, sig.hex()), pae)
        except (UnverifiedSignatureError, SSlibVerificationError):
            continue
        verified = True
        break
    if not verified:
        claimed = sorted({keyid for keyid, _ in signatures if keyid})
        if claimed and verifier.keyid not in claimed:
            reason = f"signed by keyid {', '.join(claimed)}, not by the given key {verifier.keyid}"
        else:
            reason = f"signature does not match the payload under key {verifier.keyid}"
        raise VerificationError(f"{source}: DSSE signature verification failed: {reason}")
    return _parse_statement(envelope.payload, predicate_type, source)


def _parse_statement(payload: bytes, predicate_type: str | None, source: str) -> dict[str, Any]:
    """A correctly signed payload that is not the expected Statement still attests nothing we asked."""
    try:
        statement = parse_json(payload, "signed payload")
    except BadInputError as exc:  # signed, yet not a Statement: it attests nothing asked of it
        raise VerificationError(f"{source}: {exc} (expected an in-toto Statement)") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"{source}: signed payload is not an in-toto Statement v1")
    subject = statement.get("subject")
    if not isinstance(subject, list) or not subject:
        raise VerificationError(f"{source}: signed Statement has no subject")
    if predicate_type is not None and statement.get("predicateType") != predicate_type:
        raise VerificationError(
            f"{source}: signed Statement has predicateType {statement.get('predicateType')!r},"
            f" expected {predicate_type!r}"
        )
    return statement
