"""How big a reproduction is: the model families, and the suspects built in each.

The paper builds, per source model, 30 infringing models at each generated-data share
rho and innocent models, plus K = 10 shadow models per source for the discriminator.
Two CPU cores afford a fraction of that; the counts below are the scaled ones and
docs/reproduction.md states them beside the paper's. Every model is a zoo suspect
(content-addressed and cached), so an interrupted build resumes where it stopped.

Each family's clean models are split in two folds by replicate: the discriminator is fit
on one fold (the shadow models, as the owner would build them) and scored on the other
(held-out suspects), then the folds swap, so every model is scored exactly once by a
discriminator that never saw it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from auditor.config import FrozenModel
from auditor.watermark import WatermarkSpec
from auditor.zoo.config import PRESETS, StageSpec, SuspectSpec, ZooConfig

ScaleName = Literal["tiny", "smoke"]
STAGES = ("build", "audit", "report")  # of both studies, each resumable
RHOS = (0.3, 0.5, 0.7, 1.0)


class Member(FrozenModel):
    """One suspect of a family, with its role in the evaluation."""

    name: str
    rho: float
    fold: int | None = Field(description="discriminator fold; None for baseline-1 (watermark) models")
    watermarked: bool = False


class Family(FrozenModel):
    """A base, its fine-tuned source, and the suspects built from them (the paper's SD-v1 / SD-v2)."""

    name: str
    zoo: ZooConfig
    members: tuple[Member, ...]


class Scale(FrozenModel):
    name: ScaleName
    families: tuple[Family, ...]
    num_keys: int = Field(30, description="M for Figure 6, Table 1 and Table 2")
    key_counts: tuple[int, ...] = Field(description="Figure 7's x axis (paper: 20 to 100)")
    random_keys: int = Field(description="baseline 2: keys drawn at random from the source's training set")
    delta0: float = Field(0.15, description="per-key distance threshold (paper: 0.15)")
    watermark: WatermarkSpec = WatermarkSpec()


def _family(
    name: str,
    zoo: ZooConfig,
    *,
    rhos: tuple[float, ...],
    replicates: int,
    innocent_per_fold: int,
    watermark_rhos: tuple[float, ...],
    n_samples: int,
    train: StageSpec,
    watermark: WatermarkSpec,
) -> Family:
    specs: list[SuspectSpec] = []
    members: list[Member] = []
    seed = train.seed

    def add(member: Member, mark: WatermarkSpec | None = None) -> None:
        nonlocal seed
        seed += 1
        spec_train = train.model_copy(update={"seed": seed})
        specs.append(
            SuspectSpec(
                name=member.name, rho=member.rho, n_samples=n_samples, train=spec_train, watermark=mark
            )
        )
        members.append(member)

    for fold in range(replicates):
        for rho in rhos:
            add(Member(name=f"infringing-rho{rho:.1f}-r{fold}", rho=rho, fold=fold))
        for i in range(innocent_per_fold):
            add(Member(name=f"innocent-r{fold}-{i}", rho=0.0, fold=fold))
    for rho in watermark_rhos:
        add(Member(name=f"watermarked-rho{rho:.1f}", rho=rho, fold=None, watermarked=True), watermark)
    return Family(name=name, zoo=zoo.model_copy(update={"suspects": tuple(specs)}), members=tuple(members))


def tiny() -> Scale:
    """The 32 px demo world, two families that differ in every seed (data, VAE, base, source)."""
    watermark = WatermarkSpec()
    common = dict(
        rhos=RHOS,
        replicates=2,
        innocent_per_fold=2,
        watermark_rhos=(0.3, 1.0),
        n_samples=128,
        train=StageSpec(steps=3000, lr=5e-4, seed=1000),
        watermark=watermark,
    )
    return Scale(
        name="tiny",
        families=(
            _family("v1", ZooConfig(seed=0), **common),
            _family("v2", ZooConfig(seed=1), **common),
        ),
        key_counts=(10, 20, 30, 40, 50),
        random_keys=30,
        watermark=watermark,
    )


def smoke() -> Scale:
    """Checks the pipeline end to end in CI; its numbers mean nothing. The world is the
    integration test's (16 px, 16 private pairs), its models trained for seconds."""
    watermark = WatermarkSpec(max_frequency=8)
    zoo = PRESETS["test"].model_copy(
        update=dict(
            suspects=(),
            references=(),
            vae=StageSpec(steps=150, batch_size=16, lr=2e-3, seed=1),
            # A barely trained base and a source pushed hard on 16 samples: the source departs
            # from its base within seconds, so every key strategy finds candidates.
            base=StageSpec(steps=60, lr=1e-3, seed=2),
            source=StageSpec(steps=400, lr=1e-3, seed=3),
        )
    )
    common = dict(
        rhos=(0.5, 1.0),
        replicates=2,
        innocent_per_fold=1,
        watermark_rhos=(1.0,),
        n_samples=32,
        train=StageSpec(steps=40, lr=5e-4, seed=1000),
        watermark=watermark,
    )
    return Scale(
        name="smoke",
        families=(
            _family("v1", zoo, **common),
            _family("v2", zoo.model_copy(update={"seed": 1}), **common),
        ),
        num_keys=6,
        key_counts=(4, 6, 8),
        random_keys=6,
        delta0=0.25,  # models this undertrained reproduce nothing under 0.15; the smoke run tests plumbing
        watermark=watermark,
    )


SCALES = {"tiny": tiny, "smoke": smoke}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ValueError(f"--scale: expected one of {', '.join(SCALES)}, got {name!r}")
    return SCALES[name]()
