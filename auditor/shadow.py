"""Shadow models: the statistical level's training set (paper section 4.4).

The owner fine-tunes shadow copies of the base, some on a share rho of the source's
generations (infringing) and some on other data only (innocent), audits them all with the
owner's keys, and fits a discriminator on their distance vectors. A suspect's distance
vector is then scored by that discriminator. On a GPU host the shadows are real SD
fine-tunes the owner makes with their own trainer and lists in a shadow-set file; here
`shadow build` trains them in the tiny zoo, with the reproduction's scaled counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from auditor.backends import SuspectSpec, inspect_model
from auditor.config import AuditConfig, FrozenModel
from auditor.documents import load_document
from auditor.errors import BadInputError
from auditor.identity import hash_model
from auditor.progress import Reporter
from auditor.workflow import Audit, LoadedKeys, check_keys_fit, resolve_settings

SHADOW_SCHEMA = "t2i-auditor.shadow-set/v1"
# files written before the version field had its one name
_LEGACY = {"format": "t2i-auditor-shadows-v1"}


class ShadowModel(FrozenModel):
    name: str
    path: str = Field(description="diffusers folder, absolute or relative to the shadow-set file")
    label: Literal[0, 1] = Field(description="1: trained on the source's generations; 0: innocent")
    rho: float | None = Field(None, ge=0.0, le=1.0, description="share of source generations, when known")
    digest: str | None = Field(None, description="model digest; checked before the shadow is audited")


class ShadowSet(FrozenModel):
    schema_version: Literal["t2i-auditor.shadow-set/v1"] = SHADOW_SCHEMA
    models: tuple[ShadowModel, ...] = Field(min_length=2)


def load_shadows(path: str | Path) -> tuple[ShadowSet, Path]:
    """The shadow set and the folder its relative paths are relative to."""
    p = Path(path)
    shadows = load_document(p, ShadowSet, what="shadow-set file", version=SHADOW_SCHEMA, legacy=_LEGACY)
    labels = {m.label for m in shadows.models}
    if labels != {0, 1}:
        raise BadInputError(f"{p}: models: expected both infringing (label 1) and innocent (label 0) shadows")
    return shadows, p.parent


def shadow_distances(
    shadows: ShadowSet,
    root: Path,
    keys: LoadedKeys,
    config: AuditConfig,
    reporter: Reporter,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Audit every shadow with the keys (the workflow's audit): (n_shadows, M) distances and labels.
    Every shadow is checked (found, its digest, a pipeline this tool runs with these keys) before any
    is audited."""
    rows, labels = [], []
    audit = Audit(keys=keys, config=config, settings=resolve_settings(keys.keyset))
    specs = []
    for model in shadows.models:
        path = Path(model.path) if Path(model.path).is_absolute() else root / model.path
        if not path.exists():
            raise BadInputError(f"shadow {model.name}: {path} not found")
        if model.digest and hash_model(path).digest != model.digest:
            raise BadInputError(f"shadow {model.name}: {path} does not match its recorded digest")
        spec = SuspectSpec(model=str(path), device=device, batch_size=config.batch_size)
        try:
            check_keys_fit(inspect_model(spec), keys)
        except BadInputError as exc:
            raise BadInputError(f"shadow {model.name}: {exc}") from None
        specs.append(spec)
    with reporter.task("shadow: audit shadow models", len(shadows.models)) as advance:
        for i, (model, spec) in enumerate(zip(shadows.models, specs, strict=True), start=1):
            rows.append(np.asarray(audit.record(spec, name=model.name, reporter=reporter).distances))
            labels.append(model.label)
            advance(i)
    return np.stack(rows), np.asarray(labels)


def write_shadow_set(path: Path, models: list[ShadowModel]) -> ShadowSet:
    from auditor.fileio import atomic_write_text

    shadows = ShadowSet(models=tuple(models))
    atomic_write_text(path, json.dumps(shadows.model_dump(mode="json"), indent=2) + "\n")
    return shadows
