"""The calibration study: the verdict's false-positive rate and power, measured on many models.

    t2i-audit reproduce --study calibration [--scale SCALE] [--stage build|audit|report|all]

A verdict's error rates are measured, not assumed: a world cheap enough to train some
150 models (the `test` preset's 16 px world with 64 private pairs, in which one 800-step
fine-tune takes about 34 s on one CPU thread) holds

- 8 innocent references (the reference recipe: 64 samples of the source's caption
  domain, real images, 800 steps at lr 5e-4) and a separate selection panel of 4;
- 50 innocent suspects trained like the references (other seeds and data draws): the
  population the test's level is stated for;
- 50 innocent suspects trained with recipes the references were not: other step
  counts, learning rates and sample counts, other caption subsets (outside the source's
  domain, or half outside), and other styles of the world (flatter or stronger lighting,
  more colour jitter), so the innocent population has a real spread;
- 10 infringing suspects at each rho in {0.1, 0.3, 0.5, 1.0} (the reference recipe with
  a share rho of the source's generations among the training images);
- LoRA suspects (`LORA`: LoCon style, rank 8, trained by the same trainer as the references,
  `references build --lora-rank`'s): 10 innocent LoRAs on real images and 10 LoRA
  infringers at rho 0.3 and 1.0, audited as LoRA files on the base, as an owner finds them
  online. In this world an attention-only LoRA cannot learn the source (docs/zoo.md), so the
  LoRA rows are LoCon's. `tiny-lora` is the same study with only the references, the panel and
  the first 5 of each LoRA arm (the same models: seeds do not depend on the other arms).

Every model is audited with generation keys screened by the panel (M = 30, J = 4
seeds per key), and judged by the model-level test against the 8 references and by the
first version's binomial rule (against the references, and with the base among them, as
the first demo did). The report stage writes the tables (false-positive rates with
Clopper-Pearson 95% intervals per recipe group, power per rho, inconclusive shares) and a
plot. Nothing in the test is tuned on these models: its statistic and constants were
fixed before the study (docs/method.md). Every stage is resumable.

SCALE is a design of `calibration_worlds.STUDIES`; this module holds what a design is made of
(members, recipe shifts, sampling variants) and the stages.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from auditor.config import AuditConfig, FrozenModel, GenerationSettings
from auditor.progress import Reporter
from auditor.zoo.config import StageSpec, SuspectSpec, ZooConfig

if TYPE_CHECKING:
    from auditor.report import ReferenceResult
    from auditor.verdict_test import VerdictTest

ALPHAS = (0.01, 0.05)
RHOS = (0.1, 0.3, 0.5, 1.0)
# the LoRA arms: (targets, rank, lr, steps) as the laundering study's LoRA row, and their rhos
LORA: tuple[str, int, float, int] = ("locon", 8, 1e-3, 800)
LORA_RHOS = (0.3, 1.0)


class Member(FrozenModel):
    name: str
    role: str = Field(description="reference, panel, innocent, infringing")
    group: str = Field(description="reference recipe, which recipe shift, or which sampling")
    rho: float = 0.0
    model: str | None = Field(
        None, description="the zoo model audited, when another member's (a sampling variant)"
    )
    sampling: str | None = Field(None, description="a SAMPLING variant: the model served another way")


# Sampling-noise innocents (issue 20): innocents of the references' recipe audited as an honest
# suspect may serve them (other steps, samplers, stochastic DDIM, guidance, precision), to show
# that a noisier sampler does not make a model look closer to the keys. (setting changes, dtype)
SAMPLING: dict[str, tuple[dict, str]] = {
    "steps-10": ({"steps": 10}, "float32"),
    "euler-a": ({"scheduler": "euler_a"}, "float32"),
    "dpm++": ({"scheduler": "dpm++"}, "float32"),
    "eta-1": ({"eta": 1.0}, "float32"),
    "guidance-5": ({"guidance_scale": 5.0}, "float32"),
    "bf16": ({}, "bfloat16"),
}


class Study(FrozenModel):
    name: str
    zoo: ZooConfig
    members: tuple[Member, ...]
    num_keys: int = 30
    delta0: float = 0.15
    seeds_per_key: int = 4
    min_references: int = 5
    distance: str = Field(
        "l2",
        description="the audits' distance (auditor.distance); keys are selected with l2 whatever it is",
    )


def _spec(name: str, seed: int, *, steps: int, lr: float, n: int, rho: float = 0.0, **extra) -> SuspectSpec:
    return SuspectSpec(
        name=name,
        rho=rho,
        n_samples=n,
        train=StageSpec(steps=steps, lr=lr, seed=seed, batch_size=16),
        **extra,
    )


# recipe shifts of the innocent suspects the references do not cover: (group, count, changes)
SHIFTS: tuple[tuple[str, int, dict], ...] = (
    ("steps-500", 6, {"steps": 500}),
    ("steps-1280", 4, {"steps": 1280}),
    ("lr-2.5e-4", 5, {"lr": 2.5e-4}),
    ("lr-1e-3", 5, {"lr": 1e-3}),
    ("samples-32", 5, {"n": 32}),
    ("samples-128", 5, {"n": 128}),
    ("other-captions", 5, {"domain": "other"}),
    ("half-captions", 5, {"domain": "half"}),
    ("flat-lighting", 4, {"style_gradient": 0.05}),
    ("strong-lighting", 3, {"style_gradient": 0.30}),
    ("flat-lighting-jitter", 3, {"style_gradient": 0.05, "style_jitter": 0.12}),
)


def design(
    name: str,
    world: ZooConfig,
    recipe: dict,
    *,
    references: int,
    panel: int,
    same: int,
    shifts: tuple[tuple[str, int, dict], ...],
    infringing: int | dict[float, int],
    later_same: int = 0,
    lora: int = 0,
    lora_recipe: tuple[str, int, float, int] = LORA,
    lora_rhos: tuple[float, ...] = LORA_RHOS,
    first_seed: int = 3000,
    lora_seed: int = 8001,
    sampling: int = 0,
    **fields,
) -> Study:
    """A study's members in `world`, in a fixed order that seeds them: references, panel, innocents
    of the references' recipe, each recipe shift, infringers per rho, innocents added later, then
    sampling variants (no training) and LoRA arms (fixed seeds). Each fine-tune's seed is its place
    in that order, so a design may append to a built world but never insert."""
    specs: list[SuspectSpec] = []
    members: list[Member] = []
    seed = first_seed

    def add(member: Member, **changes) -> None:
        nonlocal seed
        seed += 1
        values = {**recipe, **changes}
        specs.append(_spec(member.name, seed, rho=member.rho, **values))
        members.append(member)

    for i in range(references):
        add(Member(name=f"ref-{i:02d}", role="reference", group="reference recipe"))
    for i in range(panel):
        add(Member(name=f"panel-{i:02d}", role="panel", group="reference recipe"))
    for i in range(same):
        add(Member(name=f"innocent-same-{i:02d}", role="innocent", group="reference recipe"))
    for group, count, changes in shifts:
        for i in range(count):
            add(Member(name=f"innocent-{group}-{i:02d}", role="innocent", group=group), **changes)
    per_rho = infringing if isinstance(infringing, dict) else dict.fromkeys(RHOS, infringing)
    for rho, count in per_rho.items():
        for i in range(count):
            add(
                Member(
                    name=f"infringing-rho{rho:.1f}-{i:02d}",
                    role="infringing",
                    group="reference recipe",
                    rho=rho,
                )
            )
    # innocents of the references' recipe added after the infringers, so that every model before
    # them keeps its seed (and its cache entry): a world's level can grow without retraining it
    for i in range(same, same + later_same):
        add(Member(name=f"innocent-same-{i:03d}", role="innocent", group="reference recipe"))
    for variant in SAMPLING if sampling else ():
        for i in range(sampling):
            model = f"innocent-same-{i:02d}"
            members.append(
                Member(
                    name=f"{model}+{variant}",
                    role="innocent",
                    group=f"sampling {variant}",
                    model=model,
                    sampling=variant,
                )
            )
    targets, rank, lr, steps = lora_recipe
    group = f"lora-{targets}-r{rank}"
    values = {**recipe, "steps": steps, "lr": lr, "lora_rank": rank, "lora_targets": targets}
    # fixed seeds, not the running counter: `tiny-lora` trains the very models `tiny` holds
    for k, rho in enumerate((0.0, *lora_rhos)):
        role = "infringing" if rho else "innocent"
        for i in range(lora):
            member = f"{role}-{group}-rho{rho:.1f}-{i:02d}" if rho else f"innocent-{group}-{i:02d}"
            specs.append(_spec(member, lora_seed + 100 * k + i, rho=rho, **values))
            members.append(Member(name=member, role=role, group=group, rho=rho))
    return Study(
        name=name, zoo=world.model_copy(update={"suspects": tuple(specs)}), members=tuple(members), **fields
    )


# ---------------------------------------------------------------- stages


def build_stage(study: Study, cache_dir: Path | None, reporter: Reporter, jobs: int):
    from auditor.zoo.build import build_zoos

    (index,) = build_zoos([study.zoo], cache_dir, reporter, jobs)
    return index


def _keys(study: Study, index, out: Path, reporter: Reporter):
    """Generation keys of the source, the base as control, screened by the panel (cached)."""
    from auditor.backends import SuspectSpec as ModelSpec
    from auditor.key_selection import Selection
    from auditor.keys import load_keyset
    from auditor.selection import SelectionConfig
    from auditor.zoo import data

    folder = out / "keys"
    if (folder / "keys.json").is_file():
        keyset, _ = load_keyset(folder)
        if keyset.source.digest == index.source_digest:
            return folder
    train = data.load_dataset(index.source_train)
    Selection(
        SelectionConfig(strategy="generation", num_keys=study.num_keys, delta0=study.delta0),
        source=ModelSpec(model=index.source, device="cpu"),
        prompts=list(train.captions),
        settings=study.zoo.generation,
        base=ModelSpec(model=index.base, device="cpu"),
        panel=[
            ModelSpec(model=index.suspects[m.name], device="cpu") for m in study.members if m.role == "panel"
        ],
        panel_labels=[
            f"study {study.name}: panel model {m.name}" for m in study.members if m.role == "panel"
        ],
    ).run(folder, replace=True, reporter=reporter)
    return folder


def _config(study: Study) -> AuditConfig:
    """The audit config of every model of the study; its distance is part of the audit token, so
    records audited with another distance are never mixed with these."""
    return AuditConfig(
        delta0=study.delta0,
        seeds_per_key=study.seeds_per_key,
        min_references=study.min_references,
        distance=study.distance,
    )


def _audit_one(
    name: str, spec_json: str, keys_dir: str, config_json: str, settings_json: str, cache: str
) -> str:
    """Worker: one model's record (`Audit.record`, the workflow's one per-model record), written to
    the study's record cache, on one torch thread."""
    import torch

    from auditor.backends import SuspectSpec as ModelSpec
    from auditor.workflow import Audit, load_keys

    torch.set_num_threads(1)
    audit = Audit(
        keys=load_keys(keys_dir),
        config=AuditConfig.model_validate_json(config_json),
        settings=GenerationSettings.model_validate_json(settings_json),
        reference_cache=Path(cache),
    )
    audit.record(ModelSpec.model_validate_json(spec_json), name=name)
    return name


def sampling_of(member: Member | None, settings: GenerationSettings) -> tuple[GenerationSettings, str]:
    """The settings and dtype a member is audited with: the keyset's, or its SAMPLING variant's."""
    if member is None or member.sampling is None:
        return settings, "float32"
    changes, dtype = SAMPLING[member.sampling]
    return settings.model_copy(update=changes), dtype


def _base_of(path: str, index) -> str | None:
    """The base a zoo LoRA file applies to; None for a model folder."""
    from auditor.finetune import LORA_FILE

    return index.base if Path(path).name == LORA_FILE else None


class _Records:
    """Where the study's per-model records live: the workflow's record cache under OUT/audits, one
    `Audit` per distinct settings (a SAMPLING variant is its own audit token), each model as the
    workflow runs it (a zoo LoRA file on the base, as an owner audits a LoRA found online)."""

    def __init__(self, study: Study, out: Path, cache_dir: Path | None, reporter: Reporter) -> None:
        from auditor.backends import SuspectSpec as ModelSpec
        from auditor.workflow import Audit, load_keys, resolve_settings
        from auditor.zoo.build import build_zoo

        index = build_zoo(study.zoo, cache_dir, reporter, cached_only=True)  # trained by the build stage
        self.keys_dir = _keys(study, index, out, reporter)
        self.keys = load_keys(self.keys_dir)
        self.config = _config(study)
        self.cache = out / "audits"
        members: dict[str, Member | None] = {m.name: m for m in study.members} | {"base": None}
        paths = {m.name: index.suspects[m.model or m.name] for m in study.members} | {"base": index.base}
        self.models: dict[str, tuple[ModelSpec, Audit]] = {}
        audits: dict[str, Audit] = {}
        for name, path in paths.items():
            settings, dtype = sampling_of(members[name], resolve_settings(self.keys.keyset))
            token = settings.model_dump_json()
            if token not in audits:
                audits[token] = Audit(
                    keys=self.keys, config=self.config, settings=settings, reference_cache=self.cache
                )
            spec = ModelSpec(model=path, device="cpu", base=_base_of(path, index), dtype=dtype)
            self.models[name] = (spec, audits[token])

    def cached(self, name: str) -> ReferenceResult | None:
        spec, audit = self.models[name]
        return audit.cached_record(spec, name=name)


def audit_stage(study: Study, out: Path, cache_dir: Path | None, reporter: Reporter, jobs: int) -> None:
    records = _Records(study, out, cache_dir, reporter)
    todo = [name for name in records.models if records.cached(name) is None]
    context = multiprocessing.get_context("spawn")
    with (
        reporter.task(
            f"study {study.name}: audit {len(todo)} models, {jobs} processes", len(todo)
        ) as advance,
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
    ):
        futures = []
        for name in todo:
            spec, audit = records.models[name]
            futures.append(
                pool.submit(
                    _audit_one,
                    name,
                    spec.model_dump_json(),
                    str(records.keys_dir),
                    records.config.model_dump_json(),
                    audit.settings.model_dump_json(),
                    str(records.cache),
                )
            )
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            advance(done)


def load_records(
    study: Study, out: Path, cache_dir: Path | None = None, reporter: Reporter | None = None
) -> dict[str, ReferenceResult]:
    """Every model's record (the base's too), each checked against its model's digest and its audit
    token; a missing one names the stage to run."""
    records = _Records(study, out, cache_dir, reporter or Reporter())
    found = {}
    for name in records.models:
        record = records.cached(name)
        if record is None:
            raise FileNotFoundError(
                f"{out / 'audits'}: no record of {name} for these keys, settings and model; run the study's"
                " `t2i-audit reproduce --study ... --stage audit`"
            )
        found[name] = record
    return found


def verdicts(
    study: Study, records: dict[str, ReferenceResult], test: VerdictTest | None = None
) -> list[dict]:
    """Every suspect judged as a report judges it (`auditor.report.make_verdict`, the one place a
    verdict is made) by a registered verdict test (the shipped one unless named), beside the first
    version's binomial figure, each row naming the audit distance and the test: `p`, and `p_NAME`
    for each of the test's statistics."""
    from auditor.report import make_verdict
    from auditor.verdict_test import binomial_figure
    from auditor.verdict_tests import DEFAULT

    test = test or DEFAULT
    config = _config(study)
    references = tuple(records[m.name] for m in study.members if m.role == "reference")
    ref_hits = [r.hits for r in references]
    with_base = [*ref_hits, records["base"].hits]
    rows = []
    for member in study.members:
        if member.role not in ("innocent", "infringing"):
            continue
        record = records[member.name]
        row = {"name": member.name, "role": member.role, "group": member.group, "rho": member.rho}
        row["sampling"] = member.sampling or ""
        row["hits"] = record.hits
        row["mean_log_d"] = float(np.mean(np.log(np.maximum(record.distances, 0.01))))
        for alpha in ALPHAS:
            verdict = make_verdict(record.seed_distances, references, config, alpha, test)
            row[f"verdict@{alpha:g}"] = verdict.verdict
            if verdict.test is not None:
                row["p"] = verdict.test.p_value
                row.update({f"p_{name}": p for name, p in verdict.test.p_values.items()})
        trials = len(record.distances)
        row["p_binomial"] = binomial_figure(record.hits, trials, ref_hits).p_value
        row["p_binomial_with_base"] = binomial_figure(record.hits, trials, with_base).p_value
        row["distance"] = study.distance  # which distance these verdicts were reached with
        row["test"] = test.method
        rows.append(row)
    return rows
