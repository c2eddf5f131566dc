"""The batch summary: every suspect's numbers and the verdicts corrected for multiple testing.

Each report keeps its single-test verdict. Auditing many suspects at level alpha each
would let false accusations add up, so the summary adjusts the calibrated p-values across
the batch (`auditor.multitest`) and states the corrected verdicts. The family is every
suspect of the job: one without a report (failed, not yet run) counts with p = 1, so a
verdict can only weaken, never strengthen, as missing suspects are filled in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from auditor.batch.job import InvalidSuspect, Job
from auditor.batch.runner import BatchRunner, Outcome, now
from auditor.config import FrozenModel
from auditor.documents import parse_json, read_bytes
from auditor.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT, BadInputError
from auditor.fileio import atomic_write_text
from auditor.multitest import DESCRIPTIONS, Correction, adjust

SUMMARY_SCHEMA = "t2i-auditor.batch-summary/v1"


def _read_json(path: Path) -> Any:
    """Our own output files (error records): None when absent or unreadable, to redo."""
    try:
        return parse_json(read_bytes(path, "file"), str(path))
    except BadInputError:
        return None


class SuspectRow(FrozenModel):
    name: str
    status: Literal["done", "failed", "pending"]
    kind: str | None = None
    digest: str | None = None
    hits: int | None = None
    num_keys: int | None = None
    conf: float | None = None
    p_value: float | None = Field(None, description="the report's single-test p-value (model-level test)")
    adjusted_p_value: float | None = None
    verdict: str | None = Field(None, description="the report's single-test verdict")
    corrected_verdict: str | None = None
    rule: str | None = None
    report: str | None = None
    error: str | None = None
    exit_code: int | None = None


class BatchSummary(FrozenModel):
    schema_version: Literal["t2i-auditor.batch-summary/v1"] = SUMMARY_SCHEMA
    created_at: str
    tool_version: str
    job: str
    job_sha256: str
    keyset_digest: str
    source: str | None
    alpha: float
    correction: Correction
    correction_note: str
    family_size: int
    complete: bool
    counts: dict[str, int]
    suspects: tuple[SuspectRow, ...]


def summarize(job: Job, out: str | os.PathLike[str]) -> BatchSummary:
    """Build the batch summary from the reports and error records in OUT (audits nothing)."""
    import auditor

    runner = BatchRunner(job, out)
    runner.prepare()
    spec = job.spec
    rows: list[dict[str, Any]] = []
    for entry in job.entries:
        report = None if isinstance(entry, InvalidSuspect) else runner.existing_report(entry.name)
        if report is not None:
            test = report.verdict.test
            rows.append(
                {
                    "name": entry.name,
                    "status": "done",
                    "kind": report.suspect.kind,
                    "digest": report.suspect.digest,
                    "hits": report.summary.hits,
                    "num_keys": report.summary.num_keys,
                    "conf": report.summary.conf,
                    "p_value": test.p_value if test is not None else None,
                    "verdict": report.verdict.verdict,
                    "rule": report.verdict.rule,
                    "report": f"reports/{entry.name}.json",
                }
            )
            continue
        record = _read_json(runner.error_path(entry.name))
        if isinstance(record, dict) and "message" in record:
            rows.append(
                {
                    "name": entry.name,
                    "status": "failed",
                    "error": str(record.get("message")),
                    "exit_code": record.get("exit_code"),
                }
            )
        else:
            rows.append({"name": entry.name, "status": "pending"})
    family = [r["p_value"] if r["status"] == "done" and r["p_value"] is not None else 1.0 for r in rows]
    adjusted = adjust(family, spec.correction)
    for row, adj in zip(rows, adjusted, strict=True):
        if row["status"] != "done":
            continue
        if row["p_value"] is not None:
            row["adjusted_p_value"] = adj
        if row["verdict"] == "inconclusive" or row["p_value"] is None:
            row["corrected_verdict"] = row["verdict"]
        else:
            row["corrected_verdict"] = "infringing" if adj <= spec.alpha else "not_infringing"
    note = (
        f"{DESCRIPTIONS[spec.correction]} over {len(rows)} suspects at alpha {spec.alpha:g}; suspects without"
        " a report count with p = 1; inconclusive reports stay inconclusive"
    )
    suspects = tuple(SuspectRow.model_validate(r) for r in rows)
    counts = {
        "done": sum(r.status == "done" for r in suspects),
        "failed": sum(r.status == "failed" for r in suspects),
        "pending": sum(r.status == "pending" for r in suspects),
        "infringing": sum(r.corrected_verdict == "infringing" for r in suspects),
        "infringing_uncorrected": sum(r.verdict == "infringing" for r in suspects),
    }
    keyset = runner.keyset
    return BatchSummary(
        created_at=now(),
        tool_version=auditor.__version__,
        job=job.path.name,
        job_sha256=job.sha256,
        keyset_digest=keyset.digest,
        source=(spec.source.name if spec.source and spec.source.name else keyset.source.name),
        alpha=spec.alpha,
        correction=spec.correction,
        correction_note=note,
        family_size=len(rows),
        complete=counts["failed"] == 0 and counts["pending"] == 0,
        counts=counts,
        suspects=suspects,
    )


def write_summary(job: Job, out: str | os.PathLike[str]) -> BatchSummary:
    summary = summarize(job, out)
    atomic_write_text(
        Path(out) / "summary.json", json.dumps(summary.model_dump(mode="json"), indent=2) + "\n"
    )
    return summary


def exit_code_of(outcomes: Sequence[Outcome]) -> int:
    """0 when every suspect is done; 75 when any failure may pass on retry; else 2."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return EXIT_OK
    return EXIT_TRANSIENT if any(o.exit_code == EXIT_TRANSIENT for o in failed) else EXIT_BAD_INPUT
