"""The attribution report: one versioned schema, the document the evidence trail rests on.

It records everything a rerun needs (model and keyset digests, seeds, settings, backend
versions, thresholds) and everything a reader needs to weigh it (per-key distances, the
hit count, the null rate of innocent references and the p-value). Signing wraps the
canonical JSON of this model in a DSSE envelope (auditor.signing); this module is the
only place the schema is defined, and `t2i-audit schema` prints it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field

import auditor
from auditor.audit import AuditResult, KeyResult, fixed_threshold_verdict
from auditor.backends import BackendInfo
from auditor.calibration import CalibratedVerdict, decide
from auditor.config import AuditConfig, FrozenModel, GenerationSettings
from auditor.documents import check_version, load_document, validate
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text
from auditor.keys import KeySet, ModelRef, Strategy

REPORT_SCHEMA = "t2i-auditor.report/v1"
VerdictName = Literal["infringing", "not_infringing", "inconclusive"]


class ToolInfo(FrozenModel):
    name: str = "t2i-auditor"
    version: str
    python: str
    platform: str


class KeysetRef(FrozenModel):
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    strategy: Strategy
    num_keys: int
    commitment: str | None = Field(None, description="salted commitment published before the audit, if any")


class SuspectRef(ModelRef):
    kind: str = "diffusers_folder"


class ReferenceResult(FrozenModel):
    """An innocent reference model audited with the same keys: one draw from the null."""

    name: str
    digest: str | None
    hits: int
    num_keys: int
    conf: float
    distances: tuple[float, ...]


class Summary(FrozenModel):
    num_keys: int
    hits: int
    conf: float
    mean_distance: float
    best_distance: float
    seconds: float


class Verdict(FrozenModel):
    verdict: VerdictName
    rule: Literal["fixed_conf_threshold", "calibrated_binomial"]
    reason: str
    calibration: CalibratedVerdict | None = None


class StatisticalResult(FrozenModel):
    """The statistical level: a discriminator fit on shadow models scores the suspect's distances."""

    discriminator_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the discriminator file"
    )
    candidate: str = Field(description="the classifier cross-validation chose")
    shadows: dict[str, int] = Field(description="shadow models it was fit on, per class")
    score: float = Field(ge=0.0, le=1.0, description="probability that the suspect is infringing")
    threshold: float = Field(ge=0.0, le=1.0)
    decision: Literal["infringing", "not_infringing"]


class AttributionReport(FrozenModel):
    schema_version: Literal["t2i-auditor.report/v1"] = REPORT_SCHEMA
    tool: ToolInfo
    created_at: str
    source: ModelRef
    suspect: SuspectRef
    keyset: KeysetRef
    generation: GenerationSettings
    backend: BackendInfo
    audit: AuditConfig
    results: tuple[KeyResult, ...]
    summary: Summary
    references: tuple[ReferenceResult, ...] = ()
    verdict: Verdict
    statistical: StatisticalResult | None = Field(
        None, description="the shadow-model discriminator's score, when one was given (--discriminator)"
    )


def tool_info() -> ToolInfo:
    return ToolInfo(
        version=auditor.__version__,
        python=platform.python_version(),
        platform=f"{sys.platform}-{platform.machine()}",
    )


def make_verdict(
    result: AuditResult, config: AuditConfig, references: tuple[ReferenceResult, ...], alpha: float
):
    """Calibrated when innocent references were audited, else the paper's fixed threshold."""
    if references:
        calibrated = decide(result.hits, result.num_keys, [r.hits for r in references], alpha=alpha)
        return Verdict(
            verdict=calibrated.verdict,
            rule="calibrated_binomial",
            reason=calibrated.reason,
            calibration=calibrated,
        )
    verdict = fixed_threshold_verdict(result.conf, config.conf_threshold)
    op = ">=" if verdict == "infringing" else "<"
    return Verdict(
        verdict=verdict,
        rule="fixed_conf_threshold",
        reason=f"conf {result.conf:.3f} {op} threshold {config.conf_threshold:g} (no references: uncalibrated)",
    )


def reference_result(name: str, digest: str | None, result: AuditResult) -> ReferenceResult:
    return ReferenceResult(
        name=name,
        digest=digest,
        hits=result.hits,
        num_keys=result.num_keys,
        conf=result.conf,
        distances=tuple(k.distance for k in result.keys),
    )


def build_report(
    *,
    result: AuditResult,
    keyset: KeySet,
    suspect: SuspectRef,
    config: AuditConfig,
    references: tuple[ReferenceResult, ...] = (),
    alpha: float = 0.01,
    commitment: str | None = None,
    created_at: str | None = None,
    statistical: StatisticalResult | None = None,
) -> AttributionReport:
    return AttributionReport(
        tool=tool_info(),
        created_at=created_at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source=keyset.source,
        suspect=suspect,
        keyset=KeysetRef(
            digest=keyset.digest, strategy=keyset.strategy, num_keys=result.num_keys, commitment=commitment
        ),
        generation=result.generation,
        backend=result.backend,
        audit=config,
        results=result.keys,
        summary=Summary(
            num_keys=result.num_keys,
            hits=result.hits,
            conf=result.conf,
            mean_distance=result.mean_distance,
            best_distance=result.best_distance,
            seconds=result.seconds,
        ),
        references=references,
        verdict=make_verdict(result, config, references, alpha),
        statistical=statistical,
    )


def load_discriminator_for(path: str | os.PathLike[str], keyset: KeySet, config: AuditConfig):
    """A saved discriminator, refused (before any generation) when its shadows were audited
    with other keys, another key count, distance or number of seeds per key: distances
    from a different audit are not the distribution it learned."""
    from auditor.discriminator import Discriminator

    model = Discriminator.load(path)
    record = model.record
    if model.keyset_digest and model.keyset_digest != keyset.digest:
        raise BadInputError(
            f"{path}: this discriminator was fit for keyset {model.keyset_digest[:16]}, "
            f"not for {keyset.digest[:16]}; fit one on these keys (t2i-audit shadow fit)"
        )
    keys = min(config.max_keys or len(keyset.keys), len(keyset.keys))
    if keys != model.num_keys:
        raise BadInputError(
            f"{path}: expected an audit of {model.num_keys} keys (the discriminator was fit on "
            f"{model.num_keys}), got {keys}; set --max-keys {model.num_keys}"
        )
    if (record.distance, record.seeds_per_key) != (config.distance, config.seeds_per_key):
        raise BadInputError(
            f"{path}: fit on audits with distance {record.distance} and {record.seeds_per_key} seed(s) per key, "
            f"not {config.distance} and {config.seeds_per_key}"
        )
    return model


def score_with_discriminator(model, path: str | os.PathLike[str], result: AuditResult) -> StatisticalResult:
    """The statistical level's score of the suspect's distance vector."""
    from auditor.fileio import sha256_file

    if model.num_keys != result.num_keys:
        raise BadInputError(
            f"{path}: expected an audit of {model.num_keys} keys (the discriminator was fit on "
            f"{model.num_keys}), got {result.num_keys}"
        )
    score = float(model.predict_proba(result.distances()[None, :])[0])
    threshold = 0.5
    counts = model.record.n_train
    return StatisticalResult(
        discriminator_sha256=sha256_file(path),
        candidate=model.candidate.id,
        shadows={"infringing": counts.infringing, "innocent": counts.innocent},
        score=score,
        threshold=threshold,
        decision="infringing" if score > threshold else "not_infringing",
    )


def report_json(report: AttributionReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2) + "\n"


def save_report(report: AttributionReport, path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, report_json(report))


def parse_report(data: object, where: str) -> AttributionReport:
    """A report from parsed JSON (a file's, or an envelope's predicate)."""
    data = check_version(data, where, REPORT_SCHEMA, "attribution report")
    return validate(AttributionReport, data, where)


def load_report(path: str | os.PathLike[str]) -> AttributionReport:
    return load_document(path, AttributionReport, what="report", version=REPORT_SCHEMA)


def report_schema() -> dict:
    return AttributionReport.model_json_schema()
