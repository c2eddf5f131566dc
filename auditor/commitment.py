"""Key pre-registration by salted hash commitment.

An audit is only convincing if the owner could not have chosen the key prompts after
seeing the suspect model's outputs. Publishing (or handing the other party) a
commitment to the keyset's digest before the audit fixes the keyset without revealing
it; afterwards, revealing salt and keyset lets anyone check the two match.

The random 32-byte salt hides the keyset (without it, a guessed keyset could be tested
against the commitment offline); the domain prefix keeps a commitment from being
mistaken for any other sha256 this project computes.

`created_at` is informative only: it is not inside the hash and the owner writes it.
Proof of *when* comes from where the commitment was deposited (sent to the other
party, a timestamping authority, a public log), not from this file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from auditor.documents import load_document
from auditor.errors import BadInputError, VerificationError
from auditor.fileio import atomic_write_text

SCHEME = "sha256-salted-v1"
COMMITMENT_FILE = "commitment.json"  # inside the keyset folder it commits to
COMMITMENT_SCHEMA = "t2i-auditor.commitment/v1"
# commitments written before the version field existed carry none: they are v1
_LEGACY = {"schema_version": ""}
DOMAIN = b"t2i-auditor-keyset-commitment-v1\0"
SALT_BYTES = 32

_HEX64 = r"^[0-9a-f]{64}$"


class Commitment(BaseModel):
    """A published commitment to a keyset digest (the salt is revealed with the keyset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal["t2i-auditor.commitment/v1"] = COMMITMENT_SCHEMA
    scheme: Literal["sha256-salted-v1"]
    salt: str = Field(pattern=_HEX64)
    commitment: str = Field(pattern=_HEX64)
    created_at: str

    @field_validator("created_at")
    @classmethod
    def _utc_iso(cls, value: str) -> str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("created_at must be an ISO 8601 timestamp") from exc
        if parsed.utcoffset() is None:
            raise ValueError("created_at must carry a UTC offset")
        return value


def _digest_bytes(keyset_digest: str) -> bytes:
    if not isinstance(keyset_digest, str) or len(keyset_digest) != 64:
        raise BadInputError(f"keyset digest {keyset_digest!r}: expected 64 hex digits (sha256)")
    try:
        return bytes.fromhex(keyset_digest)
    except ValueError as exc:
        raise BadInputError(f"keyset digest {keyset_digest!r}: expected 64 hex digits (sha256)") from exc


def _commitment_hex(salt: bytes, keyset_digest: str) -> str:
    return hashlib.sha256(DOMAIN + salt + _digest_bytes(keyset_digest)).hexdigest()


def commit(keyset_digest: str, salt: bytes | None = None) -> Commitment:
    """Commit to `keyset_digest` (sha256 hex); a fresh random salt unless one is given (tests)."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
    return Commitment(
        scheme=SCHEME,
        salt=salt.hex(),
        commitment=_commitment_hex(salt, keyset_digest),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def verify_commitment(commitment: Commitment, keyset_digest: str) -> None:
    """Raise VerificationError unless `commitment` opens to `keyset_digest`."""
    expected = _commitment_hex(bytes.fromhex(commitment.salt), keyset_digest)
    if not hmac.compare_digest(expected, commitment.commitment):
        raise VerificationError(
            f"commitment {commitment.commitment[:16]}...: does not open to keyset digest {keyset_digest}"
            " with the recorded salt (keyset or salt differ from those committed)"
        )


def save_commitment(path: str | os.PathLike[str], commitment: Commitment) -> Path:
    text = json.dumps(commitment.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"
    return atomic_write_text(path, text, mode=0o644)


def load_commitment(path: str | os.PathLike[str]) -> Commitment:
    return load_document(path, Commitment, what="commitment file", version=COMMITMENT_SCHEMA, legacy=_LEGACY)
