"""The job file: keyset, references, thresholds, runtime and the suspects of one batch.

A job file (YAML, TOML or JSON, read by the one document loader) is validated in two
parts: everything but the suspects must be right or the batch does not start; each
suspect entry is validated alone, so a bad entry fails that suspect only and the batch
goes on. Relative paths are relative to the job file's folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from auditor.backends import BackendName, DType, HttpOptions, SuspectKind, SuspectSpec
from auditor.config import AuditConfig, FrozenModel, SchedulerName
from auditor.documents import check_version, parse_text, read_bytes, syntax_of, validate
from auditor.errors import BadInputError
from auditor.fileio import sha256_bytes
from auditor.multitest import Correction

JOB_SCHEMA = "t2i-auditor.job/v1"
_LEGACY = {"schema_version": ""}  # job files may leave the version out: v1
MAX_JOB_BYTES = 4 << 20
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Suffixes the runner appends to a suspect's name in one folder (reports/NAME.dsse.json beside
# reports/NAME.json; workflow.transcript_path's NAME.transcript.json beside a single audit's
# report): a suspect may not be named so that its files are another suspect's.
RESERVED_SUFFIXES = (".dsse", ".transcript")


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
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")
    dtype: DType = "float32"
    backend: BackendName = "torch"


class SuspectEntry(FrozenModel):
    """One suspect of the job: a model (any kind) under a file-name-safe name."""

    name: str = Field(pattern=NAME_PATTERN, description="file-name safe; names the report")
    model: str = Field(min_length=1, description="diffusers folder, checkpoint or LoRA file, bundle, or URL")
    kind: Literal["auto"] | SuspectKind = "auto"
    config: str | None = Field(
        None, description="single-file checkpoint: local diffusers folder of its architecture"
    )
    base: str | None = Field(None, description="LoRA file: the base diffusers folder")
    backend: BackendName | None = None
    generation: GenerationOverrides | None = None
    http: HttpOptions | None = None


class JobSpec(FrozenModel):
    """Everything but the suspects, which are validated one by one (a bad entry fails alone)."""

    schema_version: Literal["t2i-auditor.job/v1"] = JOB_SCHEMA
    source: SourceSpec | None = None
    keys: str = Field(min_length=1, description="keyset folder")
    references: tuple[str, ...] = Field((), description="innocent reference models (calibration)")
    reference_set: str | None = Field(
        None, description="a `t2i-audit references build` folder: every model in it is a reference too"
    )
    panel: tuple[str, ...] = Field((), description="when given: the selection panel the keyset must record")
    allow_inconclusive: bool = Field(
        False, description="audit with fewer than min_references references (every verdict inconclusive)"
    )
    thresholds: AuditConfig = AuditConfig()
    generation: GenerationOverrides | None = None
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    correction: Correction = "holm"
    signing_key: str | None = Field(None, description="Ed25519 private key: sign every report")
    discriminator: str | None = Field(None, description="statistical level: score every suspect with it")
    runtime: RuntimeSpec = RuntimeSpec()


@dataclass(frozen=True)
class InvalidSuspect:
    name: str
    message: str


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    path: Path
    entries: tuple[SuspectEntry | InvalidSuspect, ...]
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

    def runtime_spec(self, model: str, **fields: Any) -> SuspectSpec:
        """A SuspectSpec for `model` (resolved against the job file) with the job's runtime."""
        runtime = self.spec.runtime
        return SuspectSpec(
            model=self.resolve(model),
            backend=runtime.backend,
            device=runtime.device,
            dtype=runtime.dtype,
            batch_size=self.spec.thresholds.batch_size,
            **fields,
        )

    def suspect_spec(self, entry: SuspectEntry) -> SuspectSpec:
        spec = self.runtime_spec(
            entry.model,
            kind=entry.kind,
            config=self.resolve(entry.config) if entry.config else None,
            base=self.resolve(entry.base) if entry.base else None,
            http=self._resolved_http(entry.http),
        )
        return spec.model_copy(update={"backend": entry.backend}) if entry.backend else spec

    def _resolved_http(self, http: HttpOptions | None) -> HttpOptions | None:
        """The entry's HTTP options, a ComfyUI workflow template's path resolved like a model's."""
        if http is None or http.workflow is None:
            return http
        return http.model_copy(update={"workflow": self.resolve(http.workflow)})


def suspect_names(raw_suspects: list[Any], where: str) -> list[tuple[str, str | None]]:
    """Every entry's file name and, when its own name cannot be used, why: the one place that
    makes the name -> output file mapping injective.

    The runner writes reports/NAME.json and reports/NAME.dsse.json side by side, so a name
    ending in a reserved suffix would overwrite another suspect's envelope; names are compared
    case-insensitively, since `A` and `a` share a file on macOS and Windows file systems. An
    entry whose name is unsafe, reserved or taken is named `suspect-N` (or `suspect-N-K`),
    never a name any entry of the job asks for, so its error record clashes with nothing and
    it fails alone.
    """
    raw_names = [raw.get("name") if isinstance(raw, dict) else None for raw in raw_suspects]
    wanted = {n.casefold() for n in raw_names if isinstance(n, str)}
    used: dict[str, int] = {}
    named: list[tuple[str, str | None]] = []
    for i, raw_name in enumerate(raw_names):
        problem = None
        usable = isinstance(raw_name, str) and re.match(NAME_PATTERN, raw_name) is not None
        if usable:
            assert isinstance(raw_name, str)
            folded = raw_name.casefold()
            suffix = next((s for s in RESERVED_SUFFIXES if folded.endswith(s)), None)
            if suffix is not None:
                problem = (
                    f"{where}: field 'suspects.{i}.name': {raw_name!r} ends in {suffix!r}, which the batch "
                    f"appends to output file names (reports/NAME{suffix}.json); rename the suspect"
                )
            elif folded in used:
                other = raw_names[used[folded]]
                same = "is already" if other == raw_name else f"differs only in case from {other!r},"
                problem = f"{where}: field 'suspects.{i}.name': {raw_name!r} {same} the name of suspects.{used[folded]}"
        if usable and problem is None:
            assert isinstance(raw_name, str)
            name = raw_name
        else:
            name, k = f"suspect-{i}", 0
            while name.casefold() in wanted or name.casefold() in used:
                k += 1
                name = f"suspect-{i}-{k}"
        used.setdefault(name.casefold(), i)
        named.append((name, problem))
    return named


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
    names = suspect_names(raw_suspects, str(job_path))
    entries: list[SuspectEntry | InvalidSuspect] = []
    for i, raw in enumerate(raw_suspects):
        name, problem = names[i]
        if not isinstance(raw, dict):
            entries.append(InvalidSuspect(name, f"{job_path}: field 'suspects.{i}': expected a mapping"))
        elif problem is not None:
            entries.append(InvalidSuspect(name, problem))
        else:
            try:
                entries.append(validate(SuspectEntry, raw, str(job_path), prefix=f"suspects.{i}"))
            except BadInputError as exc:
                entries.append(InvalidSuspect(name, str(exc)))
    return Job(spec=spec, path=job_path, entries=tuple(entries), sha256=sha256_bytes(raw_bytes))


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
