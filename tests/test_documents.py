"""The one document loader: hostile bytes become one-line BadInputErrors, never tracebacks."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from auditor.config import FrozenModel
from auditor.documents import (
    MAX_DEPTH,
    check_version,
    load_document,
    parse_json,
    parse_text,
    read_bytes,
)
from auditor.errors import BadInputError


class Doc(FrozenModel):
    schema_version: str = "t2i-auditor.doc/v1"
    n: int = Field(ge=0)


HOSTILE_JSON = {
    "deep": b"[" * 5000 + b"]" * 5000,
    "deep-object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "huge-int": b'{"n": ' + b"9" * 5000 + b"}",
    "nan": b'{"n": NaN}',
    "infinity": b'{"n": -Infinity}',
    "overflowing-float": b'{"n": 1e999}',
    "duplicate-key": b'{"n": 1, "n": 2}',
    "not-utf8": b'{"n": "\xff"}',
    "truncated": b'{"n": 1',
    "empty": b"",
    "nested-just-over": b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
def test_hostile_json_is_one_line_bad_input(name):
    with pytest.raises(BadInputError) as info:
        parse_json(HOSTILE_JSON[name], "reply.json")
    message = str(info.value)
    assert message.startswith("reply.json: ") and "\n" not in message


def test_nesting_up_to_the_limit_and_ordinary_numbers_parse():
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "x") is not None
    assert parse_json(b'{"seed": 9223372036854775807, "d": 0.125}', "x") == {"seed": 2**63 - 1, "d": 0.125}


@pytest.mark.parametrize(
    ("syntax", "text"),
    [
        ("yaml", "a: " + "[" * 2000 + "]" * 2000),
        ("yaml", "n: " + "9" * 5000),
        ("yaml", "n: .nan"),
        ("yaml", "n: [unclosed"),
        ("yaml", "a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
            f"c{i}: &c{i} [*{'b' if i == 0 else f'c{i - 1}'}, *{'b' if i == 0 else f'c{i - 1}'}]\n"
            for i in range(70)
        )),
        ("toml", "n = " + "9" * 5000),
        ("toml", "n = nan"),
        ("toml", "n = [" * 3000),
    ],
)  # fmt: skip
def test_hostile_yaml_and_toml_are_one_line_bad_input(syntax, text):
    with pytest.raises(BadInputError) as info:
        parse_text(text.encode(), "job.yaml", syntax)
    assert "\n" not in str(info.value)


def test_read_bytes_refuses_folders_missing_and_oversized_files(tmp_path):
    with pytest.raises(BadInputError, match="is a folder, expected a keyset file"):
        read_bytes(tmp_path, "keyset file")
    with pytest.raises(BadInputError, match="keyset file not found"):
        read_bytes(tmp_path / "none.json", "keyset file")
    (tmp_path / "big.json").write_bytes(b"0" * 2000)
    with pytest.raises(BadInputError, match="2000 bytes, more than the 1000 accepted"):
        read_bytes(tmp_path / "big.json", "report", max_bytes=1000)


def test_version_field_and_legacy_markers(tmp_path):
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"schema_version": "t2i-auditor.doc/v1", "n": 3}))
    assert load_document(ok, Doc, what="doc", version="t2i-auditor.doc/v1").n == 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema_version": "t2i-auditor.doc/v9", "n": 3}))
    with pytest.raises(
        BadInputError, match=r"schema_version 't2i-auditor.doc/v9' is not supported \(expected"
    ):
        load_document(other, Doc, what="doc", version="t2i-auditor.doc/v1")
    legacy = {"format": "doc-v1"}
    assert check_version({"format": "doc-v1", "n": 1}, "x", "t2i-auditor.doc/v1", "doc", legacy) == {
        "schema_version": "t2i-auditor.doc/v1",
        "n": 1,
    }
    with pytest.raises(BadInputError, match="format 'doc-v0' is not supported"):
        check_version({"format": "doc-v0"}, "x", "t2i-auditor.doc/v1", "doc", legacy)
    with pytest.raises(BadInputError, match="the field is missing"):
        check_version({"n": 1}, "x", "t2i-auditor.doc/v1", "doc", legacy)
    with pytest.raises(BadInputError, match="expected a JSON object"):
        check_version([1], "x", "t2i-auditor.doc/v1", "doc")


def test_validation_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": "t2i-auditor.doc/v1", "n": -1}))
    with pytest.raises(
        BadInputError, match=r"bad.json: field 'n': Input should be greater than or equal to 0"
    ):
        load_document(bad, Doc, what="doc", version="t2i-auditor.doc/v1")


def test_yaml_duplicate_keys_are_refused_like_jsons(tmp_path):
    """Two readers must never see two documents: PyYAML alone keeps the last of two keys."""
    from auditor.documents import parse_yaml

    with pytest.raises(BadInputError, match=r"line 2 \(duplicate key 'alpha'\)"):
        parse_yaml("alpha: 0.5\nalpha: 0.01\n", "job.yaml")
    with pytest.raises(BadInputError, match="duplicate key 'b'"):
        parse_yaml("a: {b: 1, b: 2}\n", "job.yaml")
    # a key merged in with << may still be overridden: that is YAML, not a duplicate
    assert parse_yaml("x: &x {b: 1, c: 3}\ny:\n  <<: *x\n  b: 2\n", "job.yaml")["y"] == {"b": 2, "c": 3}


def test_a_hostile_value_quoted_in_an_error_is_shortened(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": "v" * 1_000_000}))
    with pytest.raises(BadInputError) as info:
        load_document(bad, Doc, what="doc", version="t2i-auditor.doc/v1")
    assert len(str(info.value)) <= 2000 and str(info.value).endswith("(message shortened)")


def test_pipes_devices_and_folders_are_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.json")  # a plain open() would wait for a writer for ever
    with pytest.raises(BadInputError, match="not a regular file"):
        read_bytes(tmp_path / "fifo.json", "doc")
    with pytest.raises(BadInputError, match="not a regular file"):
        read_bytes("/dev/zero", "doc")
    with pytest.raises(BadInputError, match="is a folder"):
        read_bytes(tmp_path, "doc")
