from __future__ import annotations

import base64
import copy
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope

from auditor.errors import BadInputError, VerificationError
from auditor.signing import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    generate_keypair,
    load_signer,
    load_verifier,
    make_statement,
    serialize_envelope,
    sign_statement,
    verify_envelope,
)

GOLDEN = Path(__file__).parent / "golden"
TEST_PRIVATE_KEY = GOLDEN / "test-signing-key.pem"
TEST_PUBLIC_KEY = GOLDEN / "test-signing-key.pub"
GOLDEN_ENVELOPE = GOLDEN / "envelope.json"
TEST_ONLY_BANNER = (
    b"TEST ONLY key of the t2i-auditor test suite: public in the repository, never sign real reports.\n"
)

STATEMENT = make_statement(
    [("suspect-model", "0" * 63 + "1")],
    {
        "verdict": "infringing",
        "p_value": 1.25e-07,
        "hits": 17,
        "trials": 50,
        "note": "fixed statement of the golden test, non-ASCII on purpose: \u00e9\u00df\u6f22",
    },
)


def regenerate_golden() -> None:
    """Rewrite the golden envelope (and the test key pair when absent). Run only on purpose:

    REGENERATE_GOLDEN=1 python -m pytest tests/test_signing.py -k golden
    """
    if not TEST_PRIVATE_KEY.exists():
        generate_keypair(TEST_PRIVATE_KEY, TEST_PUBLIC_KEY)
        for path in (TEST_PRIVATE_KEY, TEST_PUBLIC_KEY):
            data = path.read_bytes()
            path.write_bytes(TEST_ONLY_BANNER + data)
    envelope = sign_statement(STATEMENT, load_signer(TEST_PRIVATE_KEY))
    GOLDEN_ENVELOPE.write_bytes(serialize_envelope(envelope))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory / "key.pem", directory / "key.pub")
    return directory / "key.pem", directory / "key.pub"


@pytest.fixture(scope="module")
def signed(keys: tuple[Path, Path]) -> bytes:
    return serialize_envelope(sign_statement(STATEMENT, load_signer(keys[0])))


def _with_payload(envelope_bytes: bytes, payload: bytes) -> bytes:
    data = json.loads(envelope_bytes)
    data["payload"] = base64.b64encode(payload).decode()
    return json.dumps(data).encode()


def _with_sig(envelope_bytes: bytes, sig: bytes) -> bytes:
    data = json.loads(envelope_bytes)
    data["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    return json.dumps(data).encode()


def test_round_trip(keys: tuple[Path, Path], signed: bytes) -> None:
    assert verify_envelope(signed, load_verifier(keys[1])) == STATEMENT
    envelope = json.loads(signed)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert envelope["signatures"][0]["keyid"] == load_verifier(keys[1]).keyid
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE


def test_envelope_is_standard_dsse(keys: tuple[Path, Path], signed: bytes) -> None:
    """Checked with bare `cryptography` and the spec's PAE, not with the code under test."""
    envelope = json.loads(signed)
    payload = base64.b64decode(envelope["payload"])
    type_ = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(type_), type_, len(payload), payload)
    public = load_pem_public_key(keys[1].read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises if not


def test_every_payload_bit_flip_fails(keys: tuple[Path, Path], signed: bytes) -> None:
    verifier = load_verifier(keys[1])
    payload = base64.b64decode(json.loads(signed)["payload"])
    for position in range(len(payload)):
        for bit in range(8):
            tampered = bytearray(payload)
            tampered[position] ^= 1 << bit
            with pytest.raises(VerificationError):
                verify_envelope(_with_payload(signed, bytes(tampered)), verifier)


def test_every_signature_bit_flip_fails(keys: tuple[Path, Path], signed: bytes) -> None:
    verifier = load_verifier(keys[1])
    sig = base64.b64decode(json.loads(signed)["signatures"][0]["sig"])
    assert len(sig) == 64
    for position in range(len(sig)):
        for bit in range(8):
            tampered = bytearray(sig)
            tampered[position] ^= 1 << bit
            with pytest.raises(VerificationError):
                verify_envelope(_with_sig(signed, bytes(tampered)), verifier)


def test_wrong_key_fails(tmp_path: Path, signed: bytes) -> None:
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(VerificationError, match="not by the given key"):
        verify_envelope(signed, load_verifier(tmp_path / "other.pub"))


def test_keyid_is_only_a_hint(keys: tuple[Path, Path], signed: bytes) -> None:
    """DSSE keyids are optional and unauthenticated: an envelope without one still verifies."""
    data = json.loads(signed)
    del data["signatures"][0]["keyid"]
    assert verify_envelope(json.dumps(data).encode(), load_verifier(keys[1])) == STATEMENT
    data["signatures"][0]["keyid"] = "somebody-else"
    assert verify_envelope(json.dumps(data).encode(), load_verifier(keys[1])) == STATEMENT


def test_payload_type_mismatch_fails(keys: tuple[Path, Path]) -> None:
    envelope = Envelope(json.dumps(STATEMENT).encode(), "application/json", {})
    envelope.sign(load_signer(keys[0]))
    with pytest.raises(VerificationError, match="payloadType"):
        verify_envelope(json.dumps(envelope.to_dict()).encode(), load_verifier(keys[1]))


def test_signed_statement_of_other_predicate_fails(keys: tuple[Path, Path]) -> None:
    other = make_statement([("m", "a" * 64)], {}, predicate_type="https://example.com/other/v1")
    signed = serialize_envelope(sign_statement(other, load_signer(keys[0])))
    with pytest.raises(VerificationError, match="predicateType"):
        verify_envelope(signed, load_verifier(keys[1]))
    assert verify_envelope(signed, load_verifier(keys[1]), predicate_type=None) == other


def test_golden_envelope_is_byte_identical() -> None:
    if os.environ.get("REGENERATE_GOLDEN") == "1":
        regenerate_golden()
    assert TEST_PRIVATE_KEY.read_bytes().startswith(b"TEST ONLY")
    expected = GOLDEN_ENVELOPE.read_bytes()
    signer = load_signer(TEST_PRIVATE_KEY)
    assert serialize_envelope(sign_statement(STATEMENT, signer)) == expected
    assert verify_envelope(expected, load_verifier(TEST_PUBLIC_KEY)) == STATEMENT


def test_keygen_mode_and_no_overwrite(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    keyid = generate_keypair(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_verifier(public).keyid == keyid == load_signer(private).public_key.keyid
    before = private.read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        generate_keypair(private, tmp_path / "new.pub")
    with pytest.raises(BadInputError, match="already exists"):
        generate_keypair(tmp_path / "new.pem", public)
    assert private.read_bytes() == before
    assert not (tmp_path / "new.pem").exists() and not (tmp_path / "new.pub").exists()


def _pem_private(key: object) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]


def test_wrong_key_types_are_bad_input(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "rsa.pem": _pem_private(rsa_key),
        "ec.pem": _pem_private(ec_key),
        "garbage.pem": b"not a key at all",
        "public-as-private.pem": keys[1].read_bytes(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInputError, match=rf"{name}.*Ed25519"):
            load_signer(tmp_path / name)
    public_cases = {
        "rsa.pub": rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "garbage.pub": b"\x00\x01",
        "private-as-public.pub": keys[0].read_bytes(),
    }
    for name, data in public_cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInputError, match=rf"{name}.*Ed25519"):
            load_verifier(tmp_path / name)
    with pytest.raises(BadInputError, match="not found"):
        load_signer(tmp_path / "missing.pem")


def test_corrupt_envelopes_are_bad_input(keys: tuple[Path, Path], signed: bytes) -> None:
    verifier = load_verifier(keys[1])
    data = json.loads(signed)
    corrupt = [signed[: len(signed) // 2], b"", b"[]", b"\xff\xfe"]
    for field in ("payload", "payloadType", "signatures"):
        missing = copy.deepcopy(data)
        del missing[field]
        corrupt.append(json.dumps(missing).encode())
    for field, value in (
        ("payload", "!!not base64!!"),
        ("payload", 12),
        ("signatures", []),
        ("signatures", [{"keyid": "k"}]),
        ("signatures", [{"sig": "***"}]),
        ("signatures", "sig"),
    ):
        broken = copy.deepcopy(data)
        broken[field] = value
        corrupt.append(json.dumps(broken).encode())
    for envelope_bytes in corrupt:
        with pytest.raises(BadInputError):
            verify_envelope(envelope_bytes, verifier)


def test_signed_payload_with_duplicate_keys_fails(keys: tuple[Path, Path]) -> None:
    """Two parsers could read two different statements from it, so it attests nothing."""
    payload = json.dumps(STATEMENT)[:-1].encode() + b', "predicateType": "https://example.com/x"}'
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(load_signer(keys[0]))
    with pytest.raises(VerificationError, match="duplicate key"):
        verify_envelope(json.dumps(envelope.to_dict()).encode(), load_verifier(keys[1]))
