"""Running a job: each suspect audited through the workflow, every output crash-safe and resumable.

    OUT/reports/NAME.json        the attribution report (atomic), + NAME.dsse.json when signing
    OUT/errors/NAME.json         why NAME failed: one line, the exit class (2 bad input, 75 transient)
    OUT/transcripts/NAME.json    HTTP suspects: every query sent and the sha256 of every PNG returned
    OUT/references/*.json        reference audits, computed once and reused (also across --index runs)

A suspect whose report already exists and parses is skipped, so a batch killed at any
point (even with SIGKILL) is resumed by running it again: every file is written whole or
not at all, the report last. A failing suspect is recorded and the batch goes on.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from auditor.backends import SuspectSpec, identify
from auditor.batch.job import InvalidSuspect, Job, SuspectEntry
from auditor.config import FrozenModel, GenerationSettings
from auditor.errors import EXIT_OK, EXIT_TRANSIENT, AuditorError, BadInputError
from auditor.fileio import atomic_write_text, canonical_json, remove_dead_temp_files, sha256_bytes
from auditor.progress import Reporter
from auditor.workflow import Audit, LoadedKeys, envelope_path, load_keys, resolve_settings, save_outcome


class ErrorRecord(FrozenModel):
    suspect: str
    message: str
    exit_code: int
    error: str
    at: str
    traceback: str | None = None


@dataclass(frozen=True)
class Outcome:
    name: str
    status: Literal["done", "skipped", "failed"]
    exit_code: int
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "seconds": self.seconds,
        }


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BatchRunner:
    """Audits suspects of one job into one output folder; safe to run again at any point."""

    def __init__(self, job: Job, out: str | os.PathLike[str], reporter: Reporter | None = None) -> None:
        self.job = job
        self.spec = job.spec
        self.out = Path(out)
        self.reporter = reporter or Reporter()
        self._keys: LoadedKeys | None = None
        self._audits: dict[str, Audit] = {}

    # -------------------------------------------------------- paths

    def report_path(self, name: str) -> Path:
        return self.out / "reports" / f"{name}.json"

    def error_path(self, name: str) -> Path:
        return self.out / "errors" / f"{name}.json"

    def transcript_path(self, name: str) -> Path:
        return self.out / "transcripts" / f"{name}.json"

    # -------------------------------------------------------- shared inputs

    def prepare(self) -> None:
        try:
            self._keys = load_keys(self.job.resolve(self.spec.keys))
        except BadInputError as exc:
            raise BadInputError(f"{self.job.path}: field 'keys': {exc}") from None
        keyset = self._keys.keyset
        source = self.spec.source
        if source is not None and source.digest is not None and source.digest != keyset.source.digest:
            raise BadInputError(
                f"{self.job.path}: field 'source.digest': {source.digest[:16]}... differs from the keyset's source "
                f"digest {str(keyset.source.digest)[:16]}... (is this the keyset of another model?)"
            )
        for sub in ("reports", "errors"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("reports", "errors", "transcripts", "references"):
            if (self.out / sub).is_dir():
                remove_dead_temp_files(self.out / sub)  # left by writers killed mid-write

    @property
    def keys(self) -> LoadedKeys:
        if self._keys is None:
            self.prepare()
        assert self._keys is not None
        return self._keys

    @property
    def keyset(self):
        return self.keys.keyset

    def settings_for(self, entry: SuspectEntry) -> GenerationSettings:
        layers = [self.spec.generation.values() if self.spec.generation else None]
        layers.append(entry.generation.values() if entry.generation else None)
        return resolve_settings(self.keyset, *layers, where=f"suspect {entry.name!r}", prefix="generation")

    def _references(self) -> tuple[SuspectSpec, ...]:
        """The job's `references`, then every model of its `reference_set` (auditor.references)."""
        from auditor.references import all_reference_specs

        spec, runtime = self.spec, self.spec.runtime
        base = self.keyset.base.digest if self.keyset.base is not None else None
        return all_reference_specs(
            [self.job.runtime_spec(path) for path in spec.references],
            self.job.resolve(spec.reference_set) if spec.reference_set else None,
            base,
            backend=runtime.backend,
            device=runtime.device,
            dtype=runtime.dtype,
            batch_size=spec.thresholds.batch_size,
        )

    def audit_for(self, settings: GenerationSettings) -> Audit:
        """The workflow's Audit for these settings (one per distinct settings, references shared on disk)."""
        token = sha256_bytes(canonical_json(settings.model_dump(mode="json")))
        if token not in self._audits:
            spec = self.spec
            references = self._references()
            self._audits[token] = Audit(
                keys=self.keys,
                config=spec.thresholds,
                settings=settings,
                alpha=spec.alpha,
                references=references,
                reference_labels=tuple(
                    f"{self.job.path}: field 'references.{i}'"
                    if i < len(spec.references)
                    else f"{self.job.path}: field 'reference_set' (model {references[i].model})"
                    for i in range(len(references))
                ),
                discriminator=Path(self.job.resolve(spec.discriminator)) if spec.discriminator else None,
                signing_key=Path(self.job.resolve(spec.signing_key)) if spec.signing_key else None,
                reference_cache=self.out / "references",
                panel=tuple(self.job.runtime_spec(path) for path in spec.panel),
                allow_inconclusive=spec.allow_inconclusive,
            )
        return self._audits[token]

    def check_inputs(self) -> None:
        """Refusals shared by every suspect, before any generation: signing key, discriminator."""
        if self.spec.signing_key is not None and not Path(self.job.resolve(self.spec.signing_key)).is_file():
            raise BadInputError(f"{self.job.path}: field 'signing_key': {self.spec.signing_key} not found")
        try:
            self.audit_for(resolve_settings(self.keyset)).check()
        except BadInputError as exc:
            raise BadInputError(f"{self.job.path}: {exc}") from None

    # -------------------------------------------------------- per suspect

    def existing_report(self, name: str, entry: SuspectEntry | None = None):
        """The suspect's finished report, or None when there is none, it does not parse, or (given
        its entry) it is not what this job would write now: its numbers contradict each other, or it
        was made with other settings, seeds, alpha or references than the job's. Such a report is
        audited again, never signed as it stands."""
        from auditor.report import inconsistencies, load_report

        path = self.report_path(name)
        if not path.is_file():
            return None
        try:
            report = load_report(path)
        except BadInputError:
            return None  # not a finished report: audit again (the new one replaces it atomically)
        if report.keyset.digest != self.keyset.digest:
            raise BadInputError(
                f"{path}: holds a report for keyset {report.keyset.digest[:16]}..., not this job's keyset "
                f"{self.keyset.digest[:16]}...; use a fresh --out folder"
            )
        if entry is not None and not self._is_current(report, entry):
            self.reporter.log(
                f"{name}: the report on disk is not this job's (stale or edited); auditing again"
            )
            return None
        if inconsistencies(report):
            return None
        return report

    def _is_current(self, report, entry: SuspectEntry) -> bool:
        try:
            audit = self.audit_for(self.settings_for(entry))
        except AuditorError:
            return False
        references = {i.digest for i in (identify(spec) for spec in audit.references)}
        return (
            report.audit_token == audit.token
            and report.verdict.alpha == audit.alpha
            and {r.digest for r in report.references} == references
        )

    def record_error(self, name: str, exc: BaseException) -> Outcome:
        """Write errors/NAME.json and log one line; every configured secret scrubbed from both.

        The job's auth header values (`http.auth_env` of every suspect) are scrubbed as well as
        those registered by the generators of this process: an exception's text or traceback
        may quote a header value (http.client's "Invalid header value b'...'" does).
        """
        from auditor.errors import scrub

        job_secrets = tuple(
            os.environ.get(entry.http.auth_env) or ""
            for entry in self.job.entries
            if isinstance(entry, SuspectEntry) and entry.http is not None and entry.http.auth_env
        )
        if isinstance(exc, AuditorError):
            message, code, trace = str(exc), exc.exit_code, None
        else:
            first = " ".join(scrub(str(exc), job_secrets).split())[:300]
            message = (
                f"unexpected {type(exc).__name__}: {first} (a bug or an exhausted resource; see traceback)"
            )
            code, trace = EXIT_TRANSIENT, scrub("".join(traceback.format_exception(exc)), job_secrets)
        message = scrub(message, job_secrets)
        if not message.startswith(f"suspect {name!r}"):
            message = f"suspect {name!r}: {message}"
        record = ErrorRecord(
            suspect=name, message=message, exit_code=code, error=type(exc).__name__, at=now(), traceback=trace
        )
        atomic_write_text(self.error_path(name), json.dumps(record.model_dump(mode="json"), indent=2) + "\n")
        from rich.markup import escape

        from auditor.text import visible

        self.reporter.log(f"[red]{name}: failed[/red] {escape(visible(message))}")
        return Outcome(name, "failed", code, message)

    def _ensure_envelope(self, name: str) -> None:
        """A report whose run was killed before its envelope was written (the report goes first) is
        signed now; it was checked to be this job's report (`existing_report`) first."""
        from auditor.report import load_report
        from auditor.workflow import sign_report

        path = self.report_path(name)
        if self.spec.signing_key is None or envelope_path(path).is_file():
            return
        sign_report(load_report(path), path, Path(self.job.resolve(self.spec.signing_key)))

    def audit_one(
        self, entry: SuspectEntry | InvalidSuspect, settings: GenerationSettings | None = None
    ) -> Outcome:
        name = entry.name
        if isinstance(entry, InvalidSuspect):
            return self.record_error(name, BadInputError(entry.message))
        if self.existing_report(name, entry) is not None:
            self._ensure_envelope(name)
            return Outcome(name, "skipped", EXIT_OK, "report already exists")
        envelope_path(self.report_path(name)).unlink(missing_ok=True)  # an orphan of a killed run
        start = time.perf_counter()
        try:
            settings = settings or self.settings_for(entry)
            audit = self.audit_for(settings)
            outcome = audit.run(self.job.suspect_spec(entry), name=name, reporter=self.reporter)
            save_outcome(outcome, self.report_path(name), audit.signing_key, self.transcript_path(name))
        except Exception as exc:  # recorded, never fatal to the batch
            return self.record_error(name, exc)
        self.error_path(name).unlink(missing_ok=True)
        return Outcome(name, "done", EXIT_OK, seconds=time.perf_counter() - start)

    # -------------------------------------------------------- the batch

    def plan(
        self, indices: Sequence[int]
    ) -> tuple[list[Outcome], list[tuple[int, SuspectEntry, GenerationSettings]]]:
        """Outcomes known without auditing (invalid, already done) and the audits still to run."""
        known: list[Outcome] = []
        todo = []
        for i in indices:
            entry = self.job.entries[i]
            if isinstance(entry, InvalidSuspect):
                known.append(self.record_error(entry.name, BadInputError(entry.message)))
                continue
            if self.existing_report(entry.name, entry) is not None:
                self._ensure_envelope(entry.name)
                known.append(Outcome(entry.name, "skipped", EXIT_OK, "report already exists"))
                continue
            envelope_path(self.report_path(entry.name)).unlink(missing_ok=True)  # an orphan of a killed run
            try:
                settings = self.settings_for(entry)
            except AuditorError as exc:
                known.append(self.record_error(entry.name, exc))
                continue
            todo.append((i, entry, settings))
        return known, todo

    def start(
        self, indices: Sequence[int] | None = None
    ) -> tuple[list[Outcome], list[tuple[int, SuspectEntry, GenerationSettings]]]:
        """Check the shared inputs, plan, and audit the references: what an executor then runs.

        References are audited once per distinct generation settings, before any suspect,
        and cached on disk: Ray workers and --index runs read them from there.
        """
        self.prepare()
        self.check_inputs()
        indices = list(range(len(self.job.entries))) if indices is None else list(indices)
        known, todo = self.plan(indices)
        for _, _, settings in todo:
            self.audit_for(settings).reference_results(self.reporter)
        return known, todo
