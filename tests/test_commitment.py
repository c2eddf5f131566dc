from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from auditor.commitment import Commitment, commit, load_commitment, save_commitment, verify_commitment
from auditor.errors import BadInputError, VerificationError

DIGEST = hashlib.sha256(b"keyset").hexdigest()
OTHER = hashlib.sha256(b"another keyset").hexdigest()


def test_round_trip_through_file(tmp_path: Path) -> None:
    made = commit(DIGEST)
    assert made.scheme == "sha256-salted-v1"
    assert len(bytes.fromhex(made.salt)) == 32
    save_commitment(tmp_path / "c.json", made)
    loaded = load_commitment(tmp_path / "c.json")
    assert loaded == made
    verify_commitment(loaded, DIGEST)


def test_known_value() -> None:
    """Pins the construction, so an implementation change cannot silently break old commitments."""
    salt = bytes(range(32))
    made = commit(DIGEST, salt=salt)
    expected = hashlib.sha256(
        b"t2i-auditor-keyset-commitment-v1\0" + salt + bytes.fromhex(DIGEST)
    ).hexdigest()
    assert made.commitment == expected
    assert made.salt == salt.hex()


def test_fresh_salt_hides_the_digest() -> None:
    assert commit(DIGEST).commitment != commit(DIGEST).commitment


def test_other_digest_fails() -> None:
    with pytest.raises(VerificationError):
        verify_commitment(commit(DIGEST), OTHER)


def test_tampered_salt_fails() -> None:
    made = commit(DIGEST)
    flipped = format(int(made.salt[0], 16) ^ 1, "x") + made.salt[1:]
    with pytest.raises(VerificationError):
        verify_commitment(made.model_copy(update={"salt": flipped}), DIGEST)


def test_tampered_commitment_fails() -> None:
    made = commit(DIGEST)
    flipped = made.commitment[:-1] + format(int(made.commitment[-1], 16) ^ 1, "x")
    with pytest.raises(VerificationError):
        verify_commitment(made.model_copy(update={"commitment": flipped}), DIGEST)


def test_bad_keyset_digest_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="64 hex"):
        commit("abc")
    with pytest.raises(BadInputError, match="64 hex"):
        commit("z" * 64)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b"\xff\xfe",
        json.dumps({"scheme": "sha256-salted-v1", "salt": "00" * 32}).encode(),
        json.dumps(
            {
                "scheme": "md5",
                "salt": "00" * 32,
                "commitment": "11" * 32,
                "created_at": "2024-01-01T00:00:00+00:00",
            }
        ).encode(),
        json.dumps(
            {
                "scheme": "sha256-salted-v1",
                "salt": "0" * 10,
                "commitment": "11" * 32,
                "created_at": "2024-01-01T00:00:00+00:00",
            }
        ).encode(),
        json.dumps(
            {
                "scheme": "sha256-salted-v1",
                "salt": "00" * 32,
                "commitment": "11" * 32,
                "created_at": "yesterday",
            }
        ).encode(),
        json.dumps(
            {
                "scheme": "sha256-salted-v1",
                "salt": "00" * 32,
                "commitment": "11" * 32,
                "created_at": "2024-01-01T00:00:00+00:00",
                "extra": 1,
            }
        ).encode(),
    ],
)
def test_malformed_file_is_bad_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="c.json"):
        load_commitment(path)


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_commitment(tmp_path / "absent.json")


def test_model_is_frozen() -> None:
    made = commit(DIGEST)
    with pytest.raises(ValueError):
        made.salt = "00" * 32  # type: ignore[misc]
    assert isinstance(made, Commitment)
