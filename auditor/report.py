"""The attribution report: one versioned schema, the document the evidence trail rests on.

It records everything a rerun needs (model and keyset digests, the audit nonce and every
seed, settings, backend versions, thresholds) and everything a reader needs to weigh it
(every (key, seed) distance of the suspect and of each innocent reference, and the
model-level test built from them). `recompute_verdict` derives the verdict again from
those numbers alone, which `t2i-audit verify` does for every signed report. Signing wraps
the canonical JSON of this model in a DSSE envelope (auditor.signing); this module is the
only place the schema is defined, and `t2i-audit schema` prints it.

v2 (this version): the model-level test replaced the binomial verdict of v1; v1 reports
are refused with a one-line error naming the version expected.
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
from auditor.audit import AuditResult, KeyResult, audit_seeds, audit_token, fixed_threshold_verdict
from auditor.backends import BackendInfo
from auditor.config import AuditConfig, FrozenModel, GenerationSettings
from auditor.distance import DISTANCES
from auditor.documents import check_version, load_document, validate
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text
from auditor.keys import KeySet, ModelRef, Strategy
from auditor.verdict_test import BinomialFigure, ModelTest, VerdictName, VerdictTest, decide
from auditor.verdict_tests import DEFAULT, VERDICT_TESTS

REPORT_SCHEMA = "t2i-auditor.report/v2"


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
    """An innocent reference model audited exactly like the suspect: one draw from the null."""

    name: str
    digest: str | None
    content_digest: str | None = Field(None, description="its weights alone (auditor.identity)")
    hits: int
    num_keys: int
    conf: float
    distances: tuple[float, ...] = Field(description="per key: the min over its audit seeds")
    seed_distances: tuple[tuple[float, ...], ...] = Field(description="per key, per audit seed")
    audit_token: str = Field(description="equal to the suspect's: same keys, nonce, seeds, settings")
    backend: BackendInfo = Field(description="what regenerated its images (compare with the suspect's)")


class Summary(FrozenModel):
    num_keys: int
    hits: int
    conf: float = Field(description="the paper's confidence: share of keys under delta0")
    paper_verdict: Literal["infringing", "not_infringing"] = Field(
        description="the paper's fixed threshold on conf (a figure, not the verdict)"
    )
    mean_distance: float
    best_distance: float
    seconds: float


class Verdict(FrozenModel):
    verdict: VerdictName
    rule: Literal["model_level_test"] = "model_level_test"
    reason: str
    alpha: float = Field(gt=0.0, lt=1.0)
    min_references: int
    n_references: int
    test: ModelTest | None = Field(None, description="absent with fewer than three references")
    binomial: BinomialFigure | None = Field(None, description="the paper's kind of figure; not the verdict")


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
    schema_version: Literal["t2i-auditor.report/v2"] = REPORT_SCHEMA
    tool: ToolInfo
    created_at: str
    source: ModelRef
    suspect: SuspectRef
    keyset: KeysetRef
    generation: GenerationSettings
    backend: BackendInfo
    audit: AuditConfig
    audit_token: str = Field(description="sha256 of keyset, audit config and settings (auditor.audit)")
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
    suspect_distances: tuple[tuple[float, ...], ...],
    references: tuple[ReferenceResult, ...],
    config: AuditConfig,
    alpha: float,
    test: VerdictTest = DEFAULT,
) -> Verdict:
    """The verdict test (`DEFAULT` for a new audit) of the suspect's distances (per key, per audit
    seed) against the references'."""
    decision = decide(
        suspect_distances,
        [r.seed_distances for r in references],
        test=test,
        alpha=alpha,
        min_references=config.min_references,
        delta0=config.delta0,
        reference_names=[r.name for r in references],
    )
    return Verdict(
        verdict=decision.verdict,
        reason=decision.reason,
        alpha=alpha,
        min_references=config.min_references,
        n_references=len(references),
        test=decision.test,
        binomial=decision.binomial,
    )


def reference_result(
    name: str, digest: str | None, result: AuditResult, content_digest: str | None = None
) -> ReferenceResult:
    return ReferenceResult(
        name=name,
        digest=digest,
        content_digest=content_digest,
        hits=result.hits,
        num_keys=result.num_keys,
        conf=result.conf,
        distances=tuple(k.distance for k in result.keys),
        seed_distances=tuple(k.distances for k in result.keys),
        audit_token=result.token,
        backend=result.backend,
    )


def check_comparable(references: tuple[ReferenceResult, ...], token: str, where: str = "references") -> None:
    """Refuse references audited with other keys, seeds, settings or distance than the suspect."""
    for ref in references:
        if ref.audit_token != token:
            raise BadInputError(
                f"{where}: reference {ref.name!r} was audited with other keys, seeds or settings than the "
                f"suspect (audit token {ref.audit_token[:16]}..., expected {token[:16]}...); audit it again"
            )


def recompute_verdict(report: AttributionReport) -> Verdict:
    """The verdict derived again from the report's own numbers, by the test that made it (what
    `verify` checks; `inconsistencies` refuses a method this version does not know)."""
    recorded = report.verdict.test
    test = VERDICT_TESTS.get(recorded.method, DEFAULT) if recorded is not None else DEFAULT
    return make_verdict(
        tuple(k.distances for k in report.results),
        report.references,
        report.audit,
        report.verdict.alpha,
        test,
    )


def inconsistencies(report: AttributionReport) -> list[str]:
    """Every way the report's numbers disagree with each other (empty for a report as written).

    A signed report is evidence only of what follows from its own distances: each key's
    distance is the min of its per-seed distances and a hit is a distance under delta0; the
    summary counts them; the audit token is the one its keyset, audit config and settings
    give, and every reference carries it; the verdict is the test's on those numbers, made by
    a method this version knows.
    """
    problems = _shape_problems(report)
    delta0 = report.audit.delta0
    for key in report.results:
        if not key.distances or key.distance != min(key.distances) or key.hit != (key.distance < delta0):
            problems.append(f"key {key.key_id}: distance or hit does not follow from its per-seed distances")
    for ref in report.references:
        if (
            tuple(min(d) for d in ref.seed_distances) != ref.distances
            or ref.hits != sum(d < delta0 for d in ref.distances)
            or ref.conf != (ref.hits / ref.num_keys if ref.num_keys else 0.0)
        ):
            problems.append(
                f"reference {ref.name}: distances or hits do not follow from its per-seed distances"
            )
    s = report.summary
    distances = [k.distance for k in report.results]
    hits = sum(k.hit for k in report.results)
    expected = (
        len(distances),
        hits,
        hits / len(distances),
        min(distances),
        fixed_threshold_verdict(hits / len(distances), report.audit.conf_threshold),
    )
    if (s.num_keys, s.hits, s.conf, s.best_distance, s.paper_verdict) != expected or abs(
        s.mean_distance - sum(distances) / len(distances)
    ) > 1e-12:
        problems.append("summary: does not count the per-key results")
    if report.audit.distance not in DISTANCES:  # the token covers the distance's settings
        problems.append(f"audit.distance: {report.audit.distance!r} is not a distance this version knows")
    else:
        token = audit_token(report.keyset.digest, report.audit, report.generation)
        if report.audit_token != token:
            problems.append("audit_token: not the one the keyset digest, audit config and settings give")
        if any(ref.audit_token != token for ref in report.references):
            problems.append("references: audited with other keys, seeds or settings than the suspect")
    test = report.verdict.test
    if test is not None and not getattr(VERDICT_TESTS.get(test.method), "may_decide", False):
        deciding = ", ".join(sorted(m for m, t in VERDICT_TESTS.items() if t.may_decide))
        problems.append(f"verdict: made by test method {test.method!r}; a verdict is made by {deciding}")
    return problems


def _shape_problems(report: AttributionReport) -> list[str]:
    """Counts that must agree, and references that cannot be innocent by their own record: one per
    key result, one seed per generation, no seed twice, and no reference that is the source or
    another reference by either digest (auditor.identity)."""
    problems = []
    n, per_key = len(report.results), report.audit.seeds_per_key
    if report.keyset.num_keys != n:
        problems.append(f"keyset.num_keys: {report.keyset.num_keys}, but the report has {n} key results")
    if len({k.key_id for k in report.results}) != n:
        problems.append("results: a key id appears twice")
    for key in report.results:
        if not len(key.seeds) == len(key.distances) == len(key.image_sha256s) == per_key:
            problems.append(
                f"key {key.key_id}: {len(key.seeds)} seeds, {len(key.distances)} distances and "
                f"{len(key.image_sha256s)} image digests for audit.seeds_per_key = {per_key}"
            )
    seeds = [s for key in report.results for s in key.seeds]
    if len(set(seeds)) != len(seeds):
        problems.append("results: an audit seed is used twice (every generation has its own)")
    source = {d for d in (report.source.digest, report.source.content_digest) if d}
    seen: dict[str, str] = {}
    for ref in report.references:
        if not ref.num_keys == len(ref.distances) == len(ref.seed_distances) == n or any(
            len(d) != per_key for d in ref.seed_distances
        ):
            problems.append(f"reference {ref.name}: not one distance per key and audit seed of this audit")
        for digest in {d for d in (ref.digest, ref.content_digest) if d}:
            if digest in source:
                problems.append(f"reference {ref.name}: its digest {digest[:16]}... is the source model's")
            elif digest in seen:
                problems.append(f"reference {ref.name}: the same model as reference {seen[digest]}")
            seen[digest] = ref.name
    return problems


def keyset_inconsistencies(report: AttributionReport, keyset: KeySet) -> list[str]:
    """Every way the report disagrees with the keyset it cites (which must be the one whose
    digest it records): the source, each result's key, prompt and audit seeds (derived again
    from the nonce), and references that are the keyset's base or a selection-panel model."""
    problems = []
    if report.source != keyset.source:
        problems.append("source: not the source model the keyset records")
    keys = keyset.keys[: report.keyset.num_keys]
    nonce = report.audit.audit_nonce
    expected = audit_seeds(nonce, keys, report.audit.seeds_per_key, keyset.forbidden_seeds()) if nonce else {}
    if [k.key_id for k in report.results] != [k.id for k in keys]:
        problems.append("results: not the keyset's keys, in its order")
    for key, result in zip(keys, report.results, strict=False):
        if result.prompt != key.prompt:
            problems.append(f"key {result.key_id}: prompt differs from the keyset's")
        if result.seeds != expected.get(key.id):
            problems.append(f"key {result.key_id}: audit seeds are not the ones the audit nonce gives")
    roles = [(m, f"the keyset's selection-panel model {m.name}") for m in keyset.selection.panel]
    if keyset.base is not None:
        roles.append((keyset.base, "the keyset's base model"))
    excluded = {d: role for model, role in roles for d in (model.digest, model.content_digest) if d}
    for ref in report.references:
        for digest in (ref.digest, ref.content_digest):
            if digest in excluded:
                problems.append(f"reference {ref.name}: is {excluded[digest]}, never an innocent reference")
    return problems


def build_report(
    *,
    result: AuditResult,
    keyset: KeySet,
    suspect: SuspectRef,
    references: tuple[ReferenceResult, ...] = (),
    alpha: float = 0.01,
    commitment: str | None = None,
    created_at: str | None = None,
    statistical: StatisticalResult | None = None,
) -> AttributionReport:
    check_comparable(references, result.token)
    config = result.config
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
        audit_token=result.token,
        results=result.keys,
        summary=Summary(
            num_keys=result.num_keys,
            hits=result.hits,
            conf=result.conf,
            paper_verdict=fixed_threshold_verdict(result.conf, config.conf_threshold),  # type: ignore[arg-type]
            mean_distance=result.mean_distance,
            best_distance=result.best_distance,
            seconds=result.seconds,
        ),
        references=references,
        verdict=make_verdict(tuple(k.distances for k in result.keys), references, config, alpha),
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
