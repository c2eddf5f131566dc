"""The reproduction's build and audit stages: models, key sets, and one audit record per model.

Build trains every family's models (`zoo.build_zoos`, cached by config hash). Audit
selects, per family, the three key sets the paper compares (generation-based and
detection-based keys, and random training samples as baseline 2), audits every model
with each of them, and decodes baseline 1's watermark from the same regenerations the
generation-key audit made, so both methods spend the same queries. Each model's record
is written atomically and reused on rerun when its key sets are unchanged: an
interrupted audit stage resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from auditor.backends import SuspectSpec, model_ref
from auditor.config import AuditConfig, FrozenModel
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.identity import hash_model
from auditor.key_selection import Selection
from auditor.keys import KeySet, ModelRef, load_keyset, save_keyset
from auditor.progress import Reporter
from auditor.reproduction.scales import Family, Scale
from auditor.selection import SelectionConfig
from auditor.watermark import bit_accuracy, detection_threshold, embed, psnr
from auditor.workflow import Audit, LoadedKeys, resolve_settings
from auditor.zoo import data
from auditor.zoo.build import ZooIndex, build_zoo, build_zoos

STRATEGIES = ("generation", "detection", "random")
WATERMARK_FPR = 0.01  # per-image false-positive rate the watermark threshold is set for


class ModelAudit(FrozenModel):
    """What one model's audits produced; the report stage needs nothing else."""

    family: str
    name: str
    role: str = Field(description="infringing, innocent, watermarked or base")
    rho: float
    fold: int | None
    digest: str
    keysets: dict[str, str] = Field(description="strategy -> keyset digest audited")
    distances: dict[str, tuple[float, ...]] = Field(
        description="strategy -> per-key distance, key order; a strategy with no qualifying key is absent"
    )
    watermark_bit_accuracy: tuple[float, ...] = Field(
        description="baseline 1, per regeneration of the first num_keys generation keys"
    )
    audit_config: str = Field("", description="digest of the AuditConfig the distances were measured with")
    seconds: float


class FamilyRecord(FrozenModel):
    """Per family: the key sets, and how baseline 1's watermark behaves on clean and marked images."""

    family: str
    zoo_config_digest: str
    source: ModelRef
    base: ModelRef
    keysets: dict[str, str]
    eligible: dict[str, int] = Field(description="strategy -> candidates that qualified as keys")
    candidates: int
    watermark_threshold: float = Field(description="bit accuracy above which an image counts as marked")
    watermark_clean_images: int
    watermark_marked_accuracy: float = Field(description="mean bit accuracy right after embedding")
    watermark_psnr_db: float = Field(description="PSNR of marked vs clean source generations")


def build_stage(scale: Scale, cache_dir: Path | None, reporter: Reporter, jobs: int) -> list[ZooIndex]:
    return build_zoos([f.zoo for f in scale.families], cache_dir, reporter, jobs)


def _selection(scale: Scale, strategy: str) -> SelectionConfig:
    count = max(scale.key_counts) if strategy == "generation" else scale.num_keys
    if strategy == "random":
        count = scale.random_keys
    return SelectionConfig(strategy=strategy, num_keys=count, delta0=scale.delta0)


def _keysets(
    scale: Scale,
    family: Family,
    zoo: ZooIndex,
    source_ref: ModelRef,
    base_ref: ModelRef,
    out: Path,
    reporter: Reporter,
) -> tuple[dict[str, tuple[KeySet, np.ndarray]], dict[str, int]]:
    train = data.load_dataset(zoo.source_train)
    result: dict[str, tuple[KeySet, np.ndarray]] = {}
    eligible: dict[str, int] = {}
    for strategy in STRATEGIES:
        folder = out / "keys" / family.name / strategy
        none_marker = folder / "none-qualify.json"
        models = {"source": source_ref.digest, "base": base_ref.digest}
        if none_marker.is_file() and json.loads(none_marker.read_text()) == models:
            eligible[strategy] = 0
            continue
        cached = load_keyset(folder) if (folder / "keys.json").is_file() else None
        if cached and (cached[0].source.digest, cached[0].base and cached[0].base.digest) == (
            source_ref.digest,
            base_ref.digest,
        ):
            keyset, images = cached
        else:  # none yet, or selected from models that have since been rebuilt
            if cached:
                shutil.rmtree(folder)
            reporter.log(f"reproduce: {family.name} {strategy} keys")
            try:
                keyset, images = Selection(
                    _selection(scale, strategy),
                    source=SuspectSpec(model=zoo.source, device="cpu"),
                    prompts=list(train.captions),
                    settings=family.zoo.generation,  # an SDXL source adds its size conditioning
                    train_images=np.asarray(train.images),
                    base=SuspectSpec(model=zoo.base, device="cpu"),
                ).run(reporter=reporter)
            except BadInputError:
                if strategy == "generation":  # the discriminator and baseline 1 need these keys
                    raise
                reporter.log(f"reproduce: {family.name}: no {strategy} key qualifies; reported as missing")
                atomic_write_text(none_marker, json.dumps(models))
                eligible[strategy] = 0
                continue
            save_keyset(keyset, images, folder)
        result[strategy] = (keyset, images)
        eligible[strategy] = keyset.selection.eligible
    return result, eligible


def _watermark_calibration(scale: Scale, family: Family, zoo: ZooIndex, keysets) -> dict:
    """Threshold on clean images of the family's world; embedding cost on the source's own keys."""
    clean = data.draw(data.caption_space(), seed=family.zoo.seed + 777, resolution=family.zoo.resolution)
    clean_accuracy = bit_accuracy(clean.images, scale.watermark)
    _, key_images = keysets["generation"]
    marked = embed(key_images, scale.watermark)
    return {
        "watermark_threshold": detection_threshold(clean_accuracy, WATERMARK_FPR),
        "watermark_clean_images": len(clean_accuracy),
        "watermark_marked_accuracy": float(bit_accuracy(marked, scale.watermark).mean()),
        "watermark_psnr_db": psnr(marked, key_images),
    }


def _audit_model(
    scale: Scale,
    family: Family,
    name: str,
    path: str,
    role: str,
    rho: float,
    fold: int | None,
    keysets: dict[str, tuple[KeySet, np.ndarray]],
    reporter: Reporter,
) -> ModelAudit:
    start = time.perf_counter()
    spec = SuspectSpec(model=path, device="cpu")
    config = AuditConfig(delta0=scale.delta0)
    distances: dict[str, tuple[float, ...]] = {}
    accuracy: tuple[float, ...] = ()
    for strategy, (keyset, images) in keysets.items():
        regenerated: list[np.ndarray] = []
        keys = LoadedKeys(Path(strategy), keyset, images, commitment=None)
        audit = Audit(keys=keys, config=config, settings=resolve_settings(keyset))
        record = audit.record(spec, name=name, reporter=reporter, images_out=regenerated)
        distances[strategy] = tuple(float(d) for d in record.distances)
        if strategy == "generation":
            first = np.concatenate(regenerated)[: scale.num_keys]
            accuracy = tuple(float(a) for a in bit_accuracy(first, scale.watermark))
    return ModelAudit(
        family=family.name,
        name=name,
        role=role,
        rho=rho,
        fold=fold,
        digest=hash_model(path).digest,
        keysets={s: k.digest for s, (k, _) in keysets.items()},
        distances=distances,
        watermark_bit_accuracy=accuracy,
        audit_config=_config_token(config),
        seconds=time.perf_counter() - start,
    )


def _config_token(config: AuditConfig) -> str:
    return sha256_bytes(canonical_json(config.model_dump(mode="json")))


def _cached(
    path: Path, keysets: dict[str, tuple[KeySet, np.ndarray]], model: str, expected: dict, config: AuditConfig
) -> ModelAudit | None:
    """The model's record when it was made with these keys and audit settings from this very model."""
    if not path.is_file():
        return None
    record = ModelAudit.model_validate_json(path.read_text())
    if record.audit_config != _config_token(config):
        return None
    same_keys = record.keysets == {s: k.digest for s, (k, _) in keysets.items()}
    same_role = {k: getattr(record, k) for k in expected} == expected
    return record if same_keys and same_role and record.digest == hash_model(model).digest else None


def audit_stage(
    scale: Scale, out: Path, cache_dir: Path | None, reporter: Reporter
) -> tuple[list[FamilyRecord], list[ModelAudit]]:
    families: list[FamilyRecord] = []
    audits: list[ModelAudit] = []
    for family in scale.families:
        zoo = build_zoo(family.zoo, cache_dir, reporter, cached_only=True)  # trained by the build stage
        source_ref = model_ref(SuspectSpec(model=zoo.source))  # hashed once per family
        base_ref = model_ref(SuspectSpec(model=zoo.base))
        keysets, eligible = _keysets(scale, family, zoo, source_ref, base_ref, out, reporter)
        record = FamilyRecord(
            family=family.name,
            zoo_config_digest=zoo.config_digest,
            source=source_ref,
            base=base_ref,
            keysets={s: k.digest for s, (k, _) in keysets.items()},
            eligible=eligible,
            candidates=keysets["generation"][0].selection.candidates,
            **_watermark_calibration(scale, family, zoo, keysets),
        )
        atomic_write_text(out / "audits" / family.name / "family.json", record.model_dump_json(indent=2))
        families.append(record)
        models = [("base", zoo.base, "base", 0.0, None)]
        for member in family.members:
            role = "watermarked" if member.watermarked else ("infringing" if member.rho > 0 else "innocent")
            models.append((member.name, zoo.suspects[member.name], role, member.rho, member.fold))
        with reporter.task(f"reproduce: audit {family.name}", len(models)) as advance:
            for done, (name, path, role, rho, fold) in enumerate(models, start=1):
                target = out / "audits" / family.name / f"{name}.json"
                expected = {"role": role, "rho": rho, "fold": fold}
                audit = _cached(target, keysets, path, expected, AuditConfig(delta0=scale.delta0))
                if audit is None:
                    audit = _audit_model(scale, family, name, path, role, rho, fold, keysets, reporter)
                    atomic_write_text(target, audit.model_dump_json(indent=2))
                audits.append(audit)
                advance(done)
    return families, audits


def load_audits(scale: Scale, out: Path) -> tuple[list[FamilyRecord], list[ModelAudit]]:
    """The audit stage's records, for the report stage; a missing one names what to run."""
    families, audits = [], []
    for family in scale.families:
        folder = out / "audits" / family.name
        meta = folder / "family.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: missing; run `t2i-audit reproduce --stage audit` first")
        record = FamilyRecord.model_validate_json(meta.read_text())
        families.append(record)
        for name in ("base", *(m.name for m in family.members)):
            path = folder / f"{name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run `t2i-audit reproduce --stage audit` first")
            audit = ModelAudit.model_validate_json(path.read_text())
            if audit.keysets != record.keysets:
                raise FileNotFoundError(f"{path}: audited with other keys than {meta}; rerun `--stage audit`")
            audits.append(audit)
    return families, audits
