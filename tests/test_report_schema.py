"""The committed JSON Schema of the report must be what `t2i-audit schema` prints today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auditor.report import REPORT_SCHEMA, report_schema
from t2i_audit import main

torch.set_num_threads(1)  # the CLI's parser imports the zoo, hence torch

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"
REGENERATE = "t2i-audit schema > docs/report.schema.json"


def test_committed_schema_matches_cli_output(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["schema"]) == 0
    live = capsys.readouterr().out
    assert COMMITTED.is_file(), f"{COMMITTED} is missing; regenerate it with: {REGENERATE}"
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == live, (
        f"docs/report.schema.json is out of date with the report model; regenerate it with: {REGENERATE}"
    )


def test_committed_schema_is_the_report_model() -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == report_schema()
    assert committed["title"] == "AttributionReport"
    assert committed["properties"]["schema_version"]["const"] == REPORT_SCHEMA
