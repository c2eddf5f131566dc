"""The laundering study: does the audit still see infringers who post-processed what they took?

    t2i-audit reproduce --study laundering [--scale tiny|smoke] [--stage build|audit|report|all]

The calibration study's world, references, selection panel, keys and model-level test
(`calibration_study`), so every number here is the shipped audit's. Infringers (rho 1.0) are trained like the calibration study's, on the
source's generations, after one laundering of their training images (`auditor.zoo.launder`):

- JPEG re-encoding at quality 75 and 50;
- a bicubic downscale to half the size and back (16 px -> 8 px -> 16 px in this world);
- additive Gaussian noise, sigma 0.03 of the pixel range (about 8 of 255 levels);
- or no change to the images, but the infringing model fine-tuned further on fresh real
  images of the same captions (`SuspectSpec.then`): half the infringing fine-tune's steps,
  and twice them.

A last row (tiny scale) is LoRA: LoCon-style infringers and innocents (`lora_targets`
"locon"), audited as LoRA files on the base; attention-only LoRAs leave no trace in this
world (docs/zoo.md), so they would only measure that.

Each attack is applied to the same infringers (the same data draws and training seeds,
five of them), so a row differs from the unlaundered row by the attack alone. Every
attack's parameters are part of its model's spec: its cache key and its audit record.
The innocents are trained like the references (other seeds and data draws): their
false-positive rate under the same test is the level beside each row's power.
"""

from __future__ import annotations

from auditor.reproduction.calibration_study import Member, Study
from auditor.reproduction.calibration_worlds import smoke_world, tiny_world
from auditor.zoo.config import FurtherSpec, StageSpec, SuspectSpec, ZooConfig
from auditor.zoo.launder import Laundering

__all__ = ["ATTACKS", "STUDIES", "LoraRecipe", "smoke", "tiny", "tiny_further"]

# (label, laundering of the images, further fine-tune as a multiple of the infringing steps)
ATTACKS: tuple[tuple[str, Laundering | None, float | None], ...] = (
    ("none", None, None),
    ("jpeg-q75", Laundering(kind="jpeg", quality=75), None),
    ("jpeg-q50", Laundering(kind="jpeg", quality=50), None),
    ("resize-0.5", Laundering(kind="resize", factor=0.5), None),
    ("noise-0.03", Laundering(kind="noise", sigma=0.03), None),
    ("further-0.5x", None, 0.5),
    ("further-2x", None, 2.0),
)


# a LoRA row: (targets "attention" or "locon", rank, learning rate, steps)
LoraRecipe = tuple[str, int, float, int]


def _study(
    name: str,
    world: ZooConfig,
    recipe: dict,
    *,
    references: int,
    panel: int,
    innocents: int,
    infringers: int,
    low_rho: tuple[float, tuple[str, ...]] | None,
    lora: LoraRecipe | None = None,
    attacks: tuple[str, ...] | None = None,
    **fields,
) -> Study:
    """References, panel and innocents seeded exactly as the calibration study's (the same cache);
    then per attack and rho the same `infringers` seeds, laundered."""
    specs: list[SuspectSpec] = []
    members: list[Member] = []

    def spec(member_name: str, seed: int, rho: float = 0.0, **extra) -> SuspectSpec:
        train = StageSpec(steps=recipe["steps"], lr=recipe["lr"], seed=seed, batch_size=16)
        return SuspectSpec(name=member_name, rho=rho, n_samples=recipe["n"], train=train, **extra)

    seed = 3000
    for role, prefix, count in (
        ("reference", "ref", references),
        ("panel", "panel", panel),
        ("innocent", "innocent-same", innocents),
    ):
        for i in range(count):
            seed += 1
            specs.append(spec(f"{prefix}-{i:02d}", seed))
            members.append(Member(name=f"{prefix}-{i:02d}", role=role, group="reference recipe"))
    rows = [(1.0, label) for label, _, _ in ATTACKS if attacks is None or label in attacks]
    if low_rho is not None:
        rows += [(low_rho[0], label) for label in low_rho[1]]
    attacks = {label: (laundering, further) for label, laundering, further in ATTACKS}
    for rho, label in rows:
        laundering, further = attacks[label]
        for i in range(infringers):
            train_seed = 5001 + i  # the same draws and seeds under every attack: rows are paired
            extra: dict = {}
            if laundering is not None:
                extra["launder"] = laundering.model_copy(update={"seed": train_seed})
            if further is not None:
                stage = StageSpec(steps=round(further * recipe["steps"]), lr=recipe["lr"], seed=7001 + i)
                extra["then"] = FurtherSpec(n_samples=recipe["n"], train=stage)
            member_name = f"infringing-rho{rho:.1f}-{label}-{i:02d}"
            specs.append(spec(member_name, train_seed, rho, **extra))
            members.append(Member(name=member_name, role="infringing", group=label, rho=rho))
    if lora is not None:  # LoRA files on the base: infringers at rho 1.0 and innocents on real images
        targets, rank, lr, steps = lora
        label = f"lora-{targets}-r{rank}"
        for role, rho, prefix, first in (
            ("infringing", 1.0, "infringing-rho1.0-", 5001),
            ("innocent", 0.0, "innocent-", 3101),
        ):
            for i in range(infringers):
                member_name = f"{prefix}{label}-{i:02d}"
                train = StageSpec(steps=steps, lr=lr, seed=first + i, batch_size=16)
                specs.append(
                    SuspectSpec(
                        name=member_name, rho=rho, n_samples=recipe["n"], train=train, lora_rank=rank,
                        lora_targets=None if targets == "attention" else targets,
                    )
                )  # fmt: skip
                members.append(Member(name=member_name, role=role, group=label, rho=rho))
    zoo = world.model_copy(update={"suspects": tuple(specs)})
    return Study(name=name, zoo=zoo, members=tuple(members), **fields)


def tiny() -> Study:
    """The study: the calibration study's 16 px world; 8 references, 4 panel, 10 innocents,
    5 infringers per attack at rho 1.0 (7 rows): 57 models, 49 minutes on one CPU core. Then
    rho 0.5 without laundering, with JPEG q50 and with the half-size round trip
    (15 models, a second run), and a LoRA row:
    5 LoCon infringers (rank 8, lr 1e-3, 800 steps; the first LoRA recipe that left a trace
    in this world, docs/zoo.md) and 5 LoCon innocents, audited as LoRA files on the base.
    82 models in all: about 66-69 minutes measured (docs/reproduction.md), over the hour."""
    world, recipe = tiny_world()
    return _study(
        "tiny", world, recipe, references=8, panel=4, innocents=10, infringers=5,
        low_rho=(0.5, ("none", "jpeg-q50", "resize-0.5")),
        lora=("locon", 8, 1e-3, 800),
    )  # fmt: skip


def tiny_further() -> Study:
    """The tiny study's members that the further fine-tunes defeat, and no others: its
    references, panel and innocents, and its rho 1.0 infringers unlaundered and fine-tuned
    further (0.5x, 2x), 37 models with the same seeds and so the same cache entries. It is
    what a comparison of distances (`--distance`) needs, without the rows every distance
    already flags."""
    world, recipe = tiny_world()
    return _study(
        "tiny-further", world, recipe, references=8, panel=4, innocents=10, infringers=5,
        low_rho=None, lora=None, attacks=("none", "further-0.5x", "further-2x"),
    )  # fmt: skip


def smoke() -> Study:
    """Checks the study's plumbing in CI in a few minutes; its numbers mean nothing."""
    world, recipe = smoke_world()
    return _study(
        "smoke", world, recipe, references=5, panel=1, innocents=2, infringers=1, low_rho=None,
        num_keys=6, delta0=0.25, seeds_per_key=2,
    )  # fmt: skip


STUDIES = {"tiny": tiny, "tiny-further": tiny_further, "smoke": smoke}
