"""The calibration study: the verdict's false-positive rate and power, measured on many models.

    t2i-audit reproduce --study calibration [--scale tiny|smoke] [--stage build|audit|report|all]

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
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from auditor.config import AuditConfig, FrozenModel
from auditor.fileio import atomic_write_text
from auditor.progress import Reporter
from auditor.zoo.config import PRESETS, StageSpec, SuspectSpec, ZooConfig

if TYPE_CHECKING:
    from auditor.verdict_test import VerdictTest

ALPHAS = (0.01, 0.05)
RHOS = (0.1, 0.3, 0.5, 1.0)
# the LoRA arms: (targets, rank, lr, steps) as the laundering study's LoRA row, and their rhos
LORA: tuple[str, int, float, int] = ("locon", 8, 1e-3, 800)
LORA_RHOS = (0.3, 1.0)


class Member(FrozenModel):
    name: str
    role: str = Field(description="reference, panel, innocent, infringing")
    group: str = Field(description="reference recipe, or which recipe shift")
    rho: float = 0.0


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


def _study(
    name: str,
    world: ZooConfig,
    recipe: dict,
    *,
    references: int,
    panel: int,
    same: int,
    shifts: tuple[tuple[str, int, dict], ...],
    infringing: int,
    lora: int = 0,
    lora_recipe: tuple[str, int, float, int] = LORA,
    **fields,
) -> Study:
    specs: list[SuspectSpec] = []
    members: list[Member] = []
    seed = 3000

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
    for rho in RHOS:
        for i in range(infringing):
            add(
                Member(
                    name=f"infringing-rho{rho:.1f}-{i:02d}",
                    role="infringing",
                    group="reference recipe",
                    rho=rho,
                )
            )
    targets, rank, lr, steps = lora_recipe
    group = f"lora-{targets}-r{rank}"
    values = {**recipe, "steps": steps, "lr": lr, "lora_rank": rank, "lora_targets": targets}
    # fixed seeds, not the running counter: `tiny-lora` trains the very models `tiny` holds
    for k, rho in enumerate((0.0, *LORA_RHOS)):
        role = "infringing" if rho else "innocent"
        for i in range(lora):
            member = f"{role}-{group}-rho{rho:.1f}-{i:02d}" if rho else f"innocent-{group}-{i:02d}"
            specs.append(_spec(member, 8001 + 100 * k + i, rho=rho, **values))
            members.append(Member(name=member, role=role, group=group, rho=rho))
    return Study(
        name=name, zoo=world.model_copy(update={"suspects": tuple(specs)}), members=tuple(members), **fields
    )


def tiny_world() -> tuple[ZooConfig, dict]:
    """The studies' world at tiny scale (16 px, 64 private pairs) and the references' recipe;
    the laundering study shares it, so its references and keys are this study's."""
    world = PRESETS["test"].model_copy(update={"private_samples": 64, "suspects": (), "references": ()})
    return world, {"steps": 800, "lr": 5e-4, "n": 64}


def smoke_world() -> tuple[ZooConfig, dict]:
    """The studies' world at smoke scale: models trained for seconds, for the plumbing only."""
    world = PRESETS["test"].model_copy(
        update={
            "private_samples": 16,
            "suspects": (),
            "references": (),
            "vae": StageSpec(steps=150, batch_size=16, lr=2e-3, seed=1),
            "base": StageSpec(steps=60, lr=1e-3, seed=2),
            "source": StageSpec(steps=400, lr=1e-3, seed=3),
        }
    )
    return world, {"steps": 30, "lr": 5e-4, "n": 16}


def tiny() -> Study:
    """The study itself: 182 models in the 16 px world. Its 152 full fine-tunes took 103.5 min on
    a shared 2-core box; `tiny-lora`'s 15 LoRAs about 65 min on a third of it (docs/reproduction.md)."""
    world, recipe = tiny_world()
    return _study(
        "tiny", world, recipe, references=8, panel=4, same=50, shifts=SHIFTS, infringing=10, lora=10
    )  # fmt: skip


def tiny_lora() -> Study:
    """The references, the panel and the first 5 models of each LoRA arm of `tiny` (the same
    models: 27 in all), for the LoRA rows alone at a third of the cost of those arms in full."""
    world, recipe = tiny_world()
    return _study("tiny-lora", world, recipe, references=8, panel=4, same=0, shifts=(), infringing=0, lora=5)


def smoke() -> Study:
    """Checks the study's plumbing in CI in about a minute; its numbers mean nothing."""
    world, recipe = smoke_world()
    shifts = (("steps-60", 1, {"steps": 60}), ("flat-lighting", 1, {"style_gradient": 0.05}))
    return _study(
        "smoke", world, recipe, references=5, panel=1, same=2, shifts=shifts, infringing=1,
        lora=1, lora_recipe=("locon", 8, 1e-3, 30), num_keys=6, delta0=0.25, seeds_per_key=2,
    )  # fmt: skip


STUDIES = {"tiny": tiny, "tiny-lora": tiny_lora, "smoke": smoke}


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


def _audit_one(path: str, keys_dir: str, config_json: str, base: str | None = None) -> dict:
    """Worker: one model's audit (the workflow's), one torch thread; a LoRA file is audited on `base`
    as an owner would audit a LoRA found online (not merged into a folder first)."""
    import torch

    from auditor.backends import SuspectSpec as ModelSpec
    from auditor.workflow import audit_model, load_keys, resolve_settings

    torch.set_num_threads(1)
    keys = load_keys(keys_dir)
    config = AuditConfig.model_validate_json(config_json)
    spec = ModelSpec(model=path, device="cpu", base=base)
    result, _ = audit_model(spec, keys, config, resolve_settings(keys.keyset))
    return {
        "token": result.token,
        "distances": [k.distance for k in result.keys],
        "seed_distances": [list(k.distances) for k in result.keys],
        "hits": result.hits,
        "seconds": round(result.seconds, 2),
    }


def _base_of(path: str, index) -> str | None:
    """The base a zoo LoRA file applies to; None for a model folder."""
    from auditor.finetune import LORA_FILE

    return index.base if Path(path).name == LORA_FILE else None


def audit_stage(study: Study, out: Path, cache_dir: Path | None, reporter: Reporter, jobs: int) -> None:
    from auditor.audit import audit_token, with_nonce
    from auditor.identity import hash_model
    from auditor.keys import load_keyset
    from auditor.workflow import resolve_settings
    from auditor.zoo.build import build_zoo

    index = build_zoo(study.zoo, cache_dir, reporter, cached_only=True)  # trained by the build stage
    keys_dir = _keys(study, index, out, reporter)
    keyset, _ = load_keyset(keys_dir)
    config = with_nonce(_config(study), keyset)
    token = audit_token(keyset, config, resolve_settings(keyset))
    models = {m.name: index.suspects[m.name] for m in study.members} | {"base": index.base}
    # each record names how its model was made (laundering and further training included), so a
    # rerun of any row can be checked against the spec that produced it
    specs = {s.name: s.model_dump(mode="json", exclude_none=True) for s in study.zoo.suspects}
    todo = {}
    for name, path in models.items():
        target = out / "audits" / f"{name}.json"
        digest = hash_model(path).digest
        if target.is_file():
            record = json.loads(target.read_text())
            if record.get("token") == token and record.get("digest") == digest:
                continue
        todo[name] = (path, digest)
    context = multiprocessing.get_context("spawn")
    with (
        reporter.task(
            f"study {study.name}: audit {len(todo)} models, {jobs} processes", len(todo)
        ) as advance,
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
    ):
        futures = {
            pool.submit(_audit_one, path, str(keys_dir), config.model_dump_json(), _base_of(path, index)): (
                name,
                digest,
            )
            for name, (path, digest) in todo.items()
        }
        for done, future in enumerate(as_completed(futures), start=1):
            name, digest = futures[future]
            record = {"name": name, "digest": digest, "suspect": specs.get(name), **future.result()}
            atomic_write_text(out / "audits" / f"{name}.json", json.dumps(record, indent=2) + "\n")
            advance(done)


def load_records(study: Study, out: Path) -> dict[str, dict]:
    records = {}
    for name in ("base", *(m.name for m in study.members)):
        path = out / "audits" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; run the study's `t2i-audit reproduce --study ... --stage audit`"
            )
        records[name] = json.loads(path.read_text())
    tokens = {r["token"] for r in records.values()}
    if len(tokens) != 1:
        raise FileNotFoundError(f"{out / 'audits'}: records of different audits; rerun `--stage audit`")
    return records


def verdicts(study: Study, records: dict[str, dict], test: VerdictTest | None = None) -> list[dict]:
    """Every suspect judged by a registered verdict test (the shipped one unless named) and by the
    first version's binomial rule, each row naming the audit distance and the test: `p`, and
    `p_NAME` for each of the test's statistics."""
    from auditor.verdict_test import binomial_figure, decide
    from auditor.verdict_tests import DEFAULT

    test = test or DEFAULT

    references = [m.name for m in study.members if m.role == "reference"]
    ref_d = [records[n]["distances"] for n in references]
    ref_hits = [records[n]["hits"] for n in references]
    with_base = [*ref_hits, records["base"]["hits"]]
    rows = []
    for member in study.members:
        if member.role not in ("innocent", "infringing"):
            continue
        record = records[member.name]
        row = {"name": member.name, "role": member.role, "group": member.group, "rho": member.rho}
        row["hits"] = record["hits"]
        row["mean_log_d"] = float(np.mean(np.log(np.maximum(record["distances"], 0.01))))
        for alpha in ALPHAS:
            decision = decide(
                record["distances"],
                ref_d,
                test=test,
                alpha=alpha,
                min_references=study.min_references,
                delta0=study.delta0,
            )
            row[f"verdict@{alpha:g}"] = decision.verdict
            if decision.test is not None:
                row["p"] = decision.test.p_value
                row.update({f"p_{name}": p for name, p in decision.test.p_values.items()})
        trials = len(record["distances"])
        row["p_binomial"] = binomial_figure(record["hits"], trials, ref_hits).p_value
        row["p_binomial_with_base"] = binomial_figure(record["hits"], trials, with_base).p_value
        row["distance"] = study.distance  # which distance these verdicts were reached with
        row["test"] = test.method
        rows.append(row)
    return rows
