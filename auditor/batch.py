"""Batch audits: one job file, many suspects, crash-safe outputs, a multiple-testing summary.

A job file (YAML, TOML or JSON) names the keyset, the innocent reference models, the audit
thresholds and the suspects. `run_batch` audits each suspect and writes

    OUT/reports/NAME.json        the attribution report (atomic), + NAME.dsse.json when signing
    OUT/errors/NAME.json         why NAME failed: one line, the exit class (2 bad input, 75 transient)
    OUT/transcripts/NAME.json    HTTP suspects: every query sent and the sha256 of every PNG returned
    OUT/references/*.json        reference audits, computed once and reused (also across --index runs)
    OUT/summary.json             per-suspect numbers and the verdicts corrected for multiple testing

A suspect whose report already exists and parses is skipped, so a batch killed at any point
(even with SIGKILL) is resumed by running it again: every file is written whole or not at
all, the report last. A failing suspect is recorded and the batch goes on.

Each report keeps its single-test verdict. Auditing many suspects at level alpha each would
let false accusations add up, so the summary adjusts the calibrated p-values across the
batch (Holm's step-down, which controls the family-wise error rate, or Benjamini-Hochberg,
which controls the false discovery rate) and states the corrected verdicts. The family is
every suspect of the job: one without a report (failed, not yet run) counts with p = 1, so
a verdict can only weaken, never strengthen, as missing suspects are filled in.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from auditor.config import AuditConfig, FrozenModel, GenerationSettings, SchedulerName
from auditor.documents import check_version, parse_json, parse_text, read_bytes, syntax_of, validate
from auditor.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT, AuditorError, BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.progress import Reporter
from auditor.remote import HttpOptions

SUMMARY_SCHEMA = "t2i-auditor.batch-summary/v1"
JOB_SCHEMA = "t2i-auditor.job/v1"
_LEGACY = {"schema_version": ""}  # job files may leave the version out: v1
MAX_JOB_BYTES = 4 << 20
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
Correction = Literal["holm", "bh", "none"]
SuspectKind = Literal["auto", "diffusers_folder", "safetensors_file", "lora_file", "http"]


# ---------------------------------------------------------------- job spec


class GenerationOverrides(FrozenModel):
    """Generation settings to change from the keyset's (only the fields given change)."""

    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: SchedulerName | None = None
    height: int | None = None
    width: int | None = None
    eta: float | None = None
    negative_prompt: str | None = None

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SourceSpec(FrozenModel):
    name: str | None = None
    digest: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="must equal the keyset's source digest"
    )


class RuntimeSpec(FrozenModel):
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    backend: Literal["torch", "onnx", "tensorrt"] = "torch"


class SuspectSpec(FrozenModel):
    name: str = Field(pattern=NAME_PATTERN, description="file-name safe; names the report")
    model: str = Field(min_length=1, description="diffusers folder, checkpoint or LoRA file, or http(s) URL")
    kind: SuspectKind = "auto"
    config: str | None = Field(
        None, description="single-file checkpoint: local diffusers folder of its architecture"
    )
    base: str | None = Field(None, description="LoRA file: the base diffusers folder")
    backend: Literal["torch", "onnx", "tensorrt"] | None = None
    generation: GenerationOverrides | None = None
    http: HttpOptions | None = None


class JobSpec(FrozenModel):
    """Everything but the suspects, which are validated one by one (a bad entry fails alone)."""

    schema_version: Literal["t2i-auditor.job/v1"] = JOB_SCHEMA
    source: SourceSpec | None = None
    keys: str = Field(min_length=1, description="keyset folder")
    references: tuple[str, ...] = Field((), description="innocent reference models (calibration)")
    thresholds: AuditConfig = AuditConfig()
    generation: GenerationOverrides | None = None
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    correction: Correction = "holm"
    signing_key: str | None = Field(None, description="Ed25519 private key: sign every report")
    runtime: RuntimeSpec = RuntimeSpec()


@dataclass(frozen=True)
class InvalidSuspect:
    name: str
    message: str


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    path: Path
    entries: tuple[SuspectSpec | InvalidSuspect, ...]
    sha256: str

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def resolve(self, value: str) -> str:
        """Relative paths in a job file are relative to the job file's folder; URLs stay as they are."""
        if value.startswith(("http://", "https://")):
            return value
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else self.path.parent / p)


def load_job(path: str | os.PathLike[str]) -> Job:
    """Parse and validate a job file; a bad suspect entry is kept as InvalidSuspect, not fatal."""
    job_path = Path(path)
    raw_bytes = read_bytes(job_path, "job file", MAX_JOB_BYTES)
    data = parse_text(raw_bytes, str(job_path), syntax_of(job_path))
    if not isinstance(data, dict):
        raise BadInputError(f"{job_path}: expected a mapping of job fields at the top level")
    data = dict(data)
    raw_suspects = data.pop("suspects", None)
    if not isinstance(raw_suspects, list) or not raw_suspects:
        raise BadInputError(f"{job_path}: field 'suspects': expected a non-empty list of suspects")
    data = check_version(data, str(job_path), JOB_SCHEMA, "job file", _LEGACY)
    spec = validate(JobSpec, data, str(job_path))
    entries: list[SuspectSpec | InvalidSuspect] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_suspects):
        raw_name = raw.get("name") if isinstance(raw, dict) else None
        name = raw_name if isinstance(raw_name, str) and re.match(NAME_PATTERN, raw_name) else f"suspect-{i}"
        if name in seen:
            raise BadInputError(
                f"{job_path}: field 'suspects.{i}.name': {name!r} is already the name of suspects.{seen[name]}"
            )
        seen[name] = i
        if not isinstance(raw, dict):
            entries.append(InvalidSuspect(name, f"{job_path}: field 'suspects.{i}': expected a mapping"))
            continue
        try:
            entries.append(validate(SuspectSpec, raw, str(job_path), prefix=f"suspects.{i}"))
        except BadInputError as exc:
            entries.append(InvalidSuspect(name, str(exc)))
    return Job(spec=spec, path=job_path, entries=tuple(entries), sha256=sha256_bytes(raw_bytes))


# ---------------------------------------------------------------- multiple testing


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: max over j <= i of (m - j + 1) p_(j), capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values: min over j >= i of m p_(j) / j, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * float(pvalues[i]) / (rank + 1))
        adjusted[i] = min(1.0, running)
    return adjusted


def adjust(pvalues: Sequence[float], method: Correction) -> list[float]:
    for p in pvalues:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p-value {p!r} outside [0, 1]")
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "none":
        return [float(p) for p in pvalues]
    raise ValueError(f"unknown correction {method!r}")


# ---------------------------------------------------------------- summary model


class ErrorRecord(FrozenModel):
    suspect: str
    message: str
    exit_code: int
    error: str
    at: str
    traceback: str | None = None


class SuspectRow(FrozenModel):
    name: str
    status: Literal["done", "failed", "pending"]
    kind: str | None = None
    digest: str | None = None
    hits: int | None = None
    num_keys: int | None = None
    conf: float | None = None
    p_value: float | None = Field(None, description="the report's single-test (binomial) p-value")
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


# ---------------------------------------------------------------- progress


class SharedProgress(Reporter):
    """One rich live display for the whole batch: a bar per suspect, a bar per key audit.

    RichReporter opens one live display per task, and rich allows one at a time; nested
    tasks (the batch bar around each audit's key bar) need them to share one.
    """

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )

    def __enter__(self) -> SharedProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @contextmanager
    def task(self, description: str, total: int):
        handle = self.progress.add_task(description, total=total)
        try:
            yield lambda completed: self.progress.update(handle, completed=completed)
        finally:
            self.progress.remove_task(handle)

    def outer(self, description: str, total: int):
        """A bar that stays on screen when done (the batch-level one)."""
        handle = self.progress.add_task(description, total=total)
        return lambda completed: self.progress.update(handle, completed=completed)

    def log(self, message: str) -> None:
        self.progress.console.print(message)


# ---------------------------------------------------------------- running


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


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BatchRunner:
    """Audits suspects of one job into one output folder; safe to run again at any point."""

    def __init__(self, job: Job, out: str | os.PathLike[str], reporter: Reporter | None = None) -> None:
        self.job = job
        self.spec = job.spec
        self.out = Path(out)
        self.reporter = reporter or Reporter()
        self._keyset = None
        self._commitment: str | None = None
        self._references: dict[str, tuple] = {}

    # -------------------------------------------------------- paths

    def report_path(self, name: str) -> Path:
        return self.out / "reports" / f"{name}.json"

    def error_path(self, name: str) -> Path:
        return self.out / "errors" / f"{name}.json"

    def transcript_path(self, name: str) -> Path:
        return self.out / "transcripts" / f"{name}.json"

    # -------------------------------------------------------- shared inputs

    def prepare(self) -> None:
        from auditor.cli import load_keyset_commitment
        from auditor.keys import load_keyset

        keys_dir = self.job.resolve(self.spec.keys)
        try:
            self._keyset = load_keyset(keys_dir)
        except BadInputError as exc:
            raise BadInputError(f"{self.job.path}: field 'keys': {exc}") from None
        keyset, _ = self._keyset
        source = self.spec.source
        if source is not None and source.digest is not None and source.digest != keyset.source.digest:
            raise BadInputError(
                f"{self.job.path}: field 'source.digest': {source.digest[:16]}... differs from the keyset's source "
                f"digest {str(keyset.source.digest)[:16]}... (is this the keyset of another model?)"
            )
        self._commitment = load_keyset_commitment(keys_dir, keyset.digest)
        for sub in ("reports", "errors"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)

    @property
    def keyset(self):
        if self._keyset is None:
            self.prepare()
        return self._keyset[0]

    @property
    def key_images(self):
        if self._keyset is None:
            self.prepare()
        return self._keyset[1]

    def settings_for(self, entry: SuspectSpec) -> GenerationSettings:
        keyset = self.keyset
        values = keyset.generation.model_dump()
        if self.spec.generation is not None:
            values |= self.spec.generation.values()
        if entry.generation is not None:
            values |= entry.generation.values()
        values["height"] = values.get("height") or keyset.height
        values["width"] = values.get("width") or keyset.width
        return validate(GenerationSettings, values, f"suspect {entry.name!r}", prefix="generation")

    def _open(self, model: str, entry: SuspectSpec | None = None):
        from auditor.suspects import open_model

        runtime = self.spec.runtime
        if entry is None:
            return open_model(
                model,
                backend=runtime.backend,
                device=runtime.device,
                dtype=runtime.dtype,
                batch_size=self.spec.thresholds.batch_size,
            )
        return open_model(
            self.job.resolve(entry.model),
            kind=entry.kind,
            config=self.job.resolve(entry.config) if entry.config else None,
            base=self.job.resolve(entry.base) if entry.base else None,
            http=entry.http,
            backend=entry.backend or runtime.backend,
            device=runtime.device,
            dtype=runtime.dtype,
            batch_size=self.spec.thresholds.batch_size,
        )

    def references_for(self, settings: GenerationSettings) -> tuple:
        """Reference audits under `settings`, from OUT/references when already computed."""
        from auditor.audit import run_audit
        from auditor.identity import hash_model
        from auditor.report import ReferenceResult, reference_result

        token = sha256_bytes(canonical_json(settings.model_dump(mode="json")))
        if token in self._references:
            return self._references[token]
        results = []
        for i, ref_path in enumerate(self.spec.references):
            where = f"{self.job.path}: field 'references.{i}'"
            path = self.job.resolve(ref_path)
            try:
                identity = hash_model(path)
            except BadInputError as exc:
                raise BadInputError(f"{where}: {exc}") from None
            key = sha256_bytes(
                canonical_json(
                    {
                        "reference": identity.digest,
                        "keyset": self.keyset.digest,
                        "config": self.spec.thresholds.model_dump(mode="json"),
                        "settings": settings.model_dump(mode="json"),
                        "runtime": self.spec.runtime.model_dump(mode="json"),
                    }
                )
            )
            cache = self.out / "references" / f"{identity.name}-{key[:16]}.json"
            cached = _read_json(cache)
            if isinstance(cached, dict) and cached.get("key") == key:
                try:
                    results.append(ReferenceResult.model_validate(cached.get("result")))
                    continue
                except ValidationError:
                    pass
            try:
                generator = self._open(path)
                with self.reporter.task(f"reference {identity.name}", 1) as advance:
                    result = run_audit(
                        generator, self.keyset, self.key_images, self.spec.thresholds, settings, self.reporter
                    )
                    advance(1)
            except AuditorError as exc:
                raise type(exc)(f"{where}: {exc}") from None
            ref = reference_result(identity.name, identity.digest, result)
            atomic_write_text(
                cache, json.dumps({"key": key, "result": ref.model_dump(mode="json")}, indent=2) + "\n"
            )
            results.append(ref)
        self._references[token] = tuple(results)
        return self._references[token]

    # -------------------------------------------------------- per suspect

    def existing_report(self, name: str):
        """The suspect's finished report, or None when there is none (or it does not parse)."""
        from auditor.report import load_report

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
        return report

    def record_error(self, name: str, exc: BaseException) -> Outcome:
        if isinstance(exc, AuditorError):
            message, code, trace = str(exc), exc.exit_code, None
        else:
            first = " ".join(str(exc).split())[:300]
            message = (
                f"unexpected {type(exc).__name__}: {first} (a bug or an exhausted resource; see traceback)"
            )
            code, trace = EXIT_TRANSIENT, "".join(traceback.format_exception(exc))
        if not message.startswith(f"suspect {name!r}"):
            message = f"suspect {name!r}: {message}"
        record = ErrorRecord(
            suspect=name,
            message=message,
            exit_code=code,
            error=type(exc).__name__,
            at=_now(),
            traceback=trace,
        )
        atomic_write_text(self.error_path(name), json.dumps(record.model_dump(mode="json"), indent=2) + "\n")
        from rich.markup import escape

        self.reporter.log(f"[red]{name}: failed[/red] {escape(message)}")
        return Outcome(name, "failed", code, message)

    def audit_one(
        self, entry: SuspectSpec | InvalidSuspect, settings: GenerationSettings | None = None
    ) -> Outcome:
        name = entry.name
        if isinstance(entry, InvalidSuspect):
            return self.record_error(name, BadInputError(entry.message))
        if self.existing_report(name) is not None:
            self._ensure_envelope(name)
            return Outcome(name, "skipped", EXIT_OK, "report already exists")
        start = time.perf_counter()
        try:
            settings = settings or self.settings_for(entry)
            self._audit(entry, settings)
        except Exception as exc:  # recorded, never fatal to the batch
            return self.record_error(name, exc)
        self.error_path(name).unlink(missing_ok=True)
        return Outcome(name, "done", EXIT_OK, seconds=time.perf_counter() - start)

    def _audit(self, entry: SuspectSpec, settings: GenerationSettings) -> None:
        from auditor.audit import run_audit
        from auditor.identity import hash_model
        from auditor.report import SuspectRef, build_report, save_report
        from auditor.suspects import detect_kind

        references = self.references_for(settings)
        model = self.job.resolve(entry.model)
        kind = detect_kind(model) if entry.kind == "auto" else entry.kind
        digest = None
        if kind != "http":
            # lora_file must be said; otherwise hash_model tells folders, safetensors and pickles apart
            identity = hash_model(model, "lora_file" if kind == "lora_file" else None)
            digest = identity.digest
        generator = self._open(entry.model, entry)
        if kind == "http":  # queries are slow: a bar per query, keys and decoys alike
            config = self.spec.thresholds
            keys = len(self.keyset.keys[: config.max_keys] if config.max_keys else self.keyset.keys)
            total = keys * (1 + generator.options.decoys_per_key) * config.seeds_per_key
            with self.reporter.task(f"{entry.name}: queries", total) as advance:
                generator.progress = advance
                result = run_audit(generator, self.keyset, self.key_images, config, settings, self.reporter)
        else:
            result = run_audit(
                generator, self.keyset, self.key_images, self.spec.thresholds, settings, self.reporter
            )
        if kind == "http":
            digest = generator.transcript_digest()
            self._write_transcript(entry.name, generator)
        report = build_report(
            result=result,
            keyset=self.keyset,
            suspect=SuspectRef(
                name=entry.name, digest=digest, kind="http_endpoint" if kind == "http" else identity.kind
            ),
            config=self.spec.thresholds,
            references=references,
            alpha=self.spec.alpha,
            commitment=self._commitment,
        )
        if self.spec.signing_key is not None:
            self._sign(report, entry.name)
        save_report(report, self.report_path(entry.name))  # last: its existence means "done"

    def _sign(self, report, name: str) -> None:
        from auditor.cli import envelope_path
        from auditor.evidence import write_signed_report

        write_signed_report(
            report, self.job.resolve(self.spec.signing_key), envelope_path(self.report_path(name))
        )

    def _ensure_envelope(self, name: str) -> None:
        """A report signed before a crash always has its envelope (written first); repair by hand edits."""
        from auditor.cli import envelope_path
        from auditor.report import load_report

        if self.spec.signing_key is None or envelope_path(self.report_path(name)).is_file():
            return
        self._sign(load_report(self.report_path(name)), name)

    def _write_transcript(self, name: str, generator) -> None:
        document = {
            "suspect": name,
            "endpoint": generator.endpoint,
            "api": generator.options.api,
            "stealth_seed": generator.stealth_seed,
            "transcript_sha256": generator.transcript_digest(),
            "requests": generator.requests,
            "failed_requests": generator.failed_requests,
            "queries": [q.__dict__ for q in generator.transcript()],
        }
        atomic_write_text(self.transcript_path(name), json.dumps(document, indent=2) + "\n")

    # -------------------------------------------------------- the batch

    def plan(
        self, indices: Sequence[int]
    ) -> tuple[list[Outcome], list[tuple[int, SuspectSpec, GenerationSettings]]]:
        """Outcomes known without auditing (invalid, already done) and the audits still to run."""
        known: list[Outcome] = []
        todo = []
        for i in indices:
            entry = self.job.entries[i]
            if isinstance(entry, InvalidSuspect):
                known.append(self.record_error(entry.name, BadInputError(entry.message)))
                continue
            if self.existing_report(entry.name) is not None:
                self._ensure_envelope(entry.name)
                known.append(Outcome(entry.name, "skipped", EXIT_OK, "report already exists"))
                continue
            try:
                settings = self.settings_for(entry)
            except AuditorError as exc:
                known.append(self.record_error(entry.name, exc))
                continue
            todo.append((i, entry, settings))
        return known, todo

    def run(
        self, indices: Sequence[int] | None = None, executor: str = "local", **ray_options
    ) -> list[Outcome]:
        self.prepare()
        if self.spec.signing_key is not None and not Path(self.job.resolve(self.spec.signing_key)).is_file():
            raise BadInputError(f"{self.job.path}: field 'signing_key': {self.spec.signing_key} not found")
        indices = list(range(len(self.job.entries))) if indices is None else list(indices)
        known, todo = self.plan(indices)
        if todo:
            # References are audited once per distinct generation settings, before any suspect,
            # and cached on disk: Ray workers and --index runs read them from there.
            for settings in {s.model_dump_json(): s for _, _, s in todo}.values():
                self.references_for(settings)
        if executor == "ray":
            done = run_with_ray(self, todo, **ray_options)
        elif executor == "local":
            done = []
            advance = (
                self.reporter.outer("suspects", len(todo))
                if isinstance(self.reporter, SharedProgress)
                else None
            )
            for n, (_, entry, settings) in enumerate(todo):
                self.reporter.log(f"auditing {entry.name} ({n + 1}/{len(todo)})")
                done.append(self.audit_one(entry, settings))
                if advance is not None:
                    advance(n + 1)
        else:
            raise BadInputError(f"--executor {executor!r}: expected local or ray")
        by_name = {o.name: o for o in [*known, *done]}
        return [by_name[self.job.entries[i].name] for i in indices if self.job.entries[i].name in by_name]


def _read_json(path: Path) -> Any:
    """Our own output files (caches, error records): None when absent or unreadable, to redo."""
    try:
        return parse_json(read_bytes(path, "file"), str(path))
    except BadInputError:
        return None


# ---------------------------------------------------------------- Ray


def _ray_audit(job_path: str, out: str, index: int, threads: int | None) -> dict[str, Any]:
    """One suspect in a Ray worker: same code, same files, as a local run (references from the cache)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    job = load_job(job_path)
    runner = BatchRunner(job, out)
    runner.prepare()
    return runner.audit_one(job.entries[index]).to_dict()


def task_resources(cluster: dict[str, float]) -> dict[str, float]:
    """What one suspect's Ray task asks for: a whole GPU where the cluster has any, else one CPU."""
    return {"num_gpus": 1} if cluster.get("GPU", 0) >= 1 else {"num_cpus": 1}


def run_with_ray(
    runner: BatchRunner,
    todo: Sequence[tuple[int, SuspectSpec, GenerationSettings]],
    *,
    num_cpus: int | None = None,
    threads: int | None = None,
) -> list[Outcome]:
    """One Ray task per suspect (one GPU each where the cluster has GPUs, else one CPU).

    Connects to the cluster named by RAY_ADDRESS, or starts a local instance (and stops it
    again). Workers must see OUT and the models at the same paths (a shared volume).
    """
    if not todo:
        return []
    try:
        import ray
    except ImportError:
        raise BadInputError(
            "--executor ray: the 'ray' package is not installed (pip install 't2i-auditor[ray]')"
        ) from None
    import logging

    from auditor.errors import TransientError

    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if not os.environ.get("RAY_ADDRESS"):
            options["num_cpus"] = num_cpus
        ray.init(**options)
        started = True
    try:
        resources = task_resources(ray.cluster_resources())
        task = ray.remote(max_retries=0)(_ray_audit).options(**resources)
        job_path, out = str(runner.job.path.resolve()), str(runner.out.resolve())
        pending = {task.remote(job_path, out, i, threads): entry.name for i, entry, _ in todo}
        advance = (
            runner.reporter.outer("suspects (ray)", len(pending))
            if isinstance(runner.reporter, SharedProgress)
            else None
        )
        outcomes: list[Outcome] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    outcomes.append(Outcome(**ray.get(ref)))
                except Exception as exc:  # a worker died (OOM, node lost): retry the batch later
                    first = " ".join(str(exc).split())[:200]
                    outcomes.append(
                        runner.record_error(
                            name, TransientError(f"ray task failed ({type(exc).__name__}: {first})")
                        )
                    )
                runner.reporter.log(f"{name}: {outcomes[-1].status}")
                if advance is not None:
                    advance(len(outcomes))
        return outcomes
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- summary


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
            calibration = report.verdict.calibration
            rows.append(
                {
                    "name": entry.name,
                    "status": "done",
                    "kind": report.suspect.kind,
                    "digest": report.suspect.digest,
                    "hits": report.summary.hits,
                    "num_keys": report.summary.num_keys,
                    "conf": report.summary.conf,
                    "p_value": calibration.p_value if calibration is not None else None,
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
    calibrated = bool(spec.references)
    if calibrated:
        family = [r["p_value"] if r["status"] == "done" and r["p_value"] is not None else 1.0 for r in rows]
        adjusted = adjust(family, spec.correction)
        for row, adj in zip(rows, adjusted, strict=True):
            if row["status"] != "done":
                continue
            if row["p_value"] is None:
                row["corrected_verdict"] = row["verdict"]
                continue
            row["adjusted_p_value"] = adj
            if row["verdict"] == "inconclusive":
                row["corrected_verdict"] = "inconclusive"
            else:
                row["corrected_verdict"] = "infringing" if adj <= spec.alpha else "not_infringing"
        what = {
            "holm": "Holm step-down (family-wise error rate)",
            "bh": "Benjamini-Hochberg (false discovery rate)",
            "none": "no correction (each suspect tested alone)",
        }[spec.correction]
        note = (
            f"{what} over {len(rows)} suspects at alpha {spec.alpha:g}; suspects without a report count "
            "with p = 1; inconclusive reports stay inconclusive"
        )
    else:
        for row in rows:
            if row["status"] == "done":
                row["corrected_verdict"] = row["verdict"]
        note = (
            "no reference models: the reports use the uncalibrated fixed conf threshold, which has no "
            "p-value to correct; corrected verdicts equal the report verdicts"
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
        created_at=_now(),
        tool_version=auditor.__version__,
        job=job.path.name,
        job_sha256=job.sha256,
        keyset_digest=keyset.digest,
        source=(spec.source.name if spec.source and spec.source.name else keyset.source.name),
        alpha=spec.alpha,
        correction=spec.correction,
        correction_note=note,
        family_size=len(rows) if calibrated else 0,
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


def job_index(entries: int, index: int | None) -> int | None:
    """--index, else JOB_COMPLETION_INDEX (a Kubernetes Indexed Job), checked against the suspects."""
    source = "--index"
    if index is None:
        env = os.environ.get("JOB_COMPLETION_INDEX")
        if env is None or env == "":
            return None
        source = "JOB_COMPLETION_INDEX"
        try:
            index = int(env)
        except ValueError:
            raise BadInputError(f"JOB_COMPLETION_INDEX={env!r}: expected an integer") from None
    if not 0 <= index < entries:
        raise BadInputError(f"{source} {index}: the job has {entries} suspects (expected 0 to {entries - 1})")
    return index


def exit_code_of(outcomes: Sequence[Outcome]) -> int:
    """0 when every suspect is done; 75 when any failure may pass on retry; else 2."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return EXIT_OK
    return EXIT_TRANSIENT if any(o.exit_code == EXIT_TRANSIENT for o in failed) else EXIT_BAD_INPUT
