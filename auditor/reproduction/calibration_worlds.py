"""The calibration studies' worlds and designs: which models each study trains, and how.

    t2i-audit reproduce --study calibration --scale SCALE

`STUDIES` maps each SCALE to its design: `tiny` (the first study), `tiny-lora`, issue 20's
development, confirmation, holdout, wide and level worlds (`dev`, `confirm`, `holdout`,
`wide`, `level`), and `smoke`. A world is a zoo (data, VAE, base, source) and the
references' recipe; a design is the members trained in it (`calibration_study.design`).
Members are seeded by their place, so a design may only append to a world that was built,
never insert: every model before keeps its seed and its cache entry. The stages that build,
audit and score a study are `calibration_study`'s.
"""

from __future__ import annotations

from auditor.reproduction.calibration_study import SHIFTS, Study, design
from auditor.zoo.config import PRESETS, StageSpec, ZooConfig


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
    return design(
        "tiny", world, recipe, references=8, panel=4, same=50, shifts=SHIFTS, infringing=10, lora=10
    )  # fmt: skip


def tiny_lora() -> Study:
    """The references, the panel and the first 5 models of each LoRA arm of `tiny` (the same
    models: 27 in all), for the LoRA rows alone at a third of the cost of those arms in full."""
    world, recipe = tiny_world()
    return design("tiny-lora", world, recipe, references=8, panel=4, same=0, shifts=(), infringing=0, lora=5)


def dev() -> Study:
    """The development world of issue 20: a subset of `tiny`'s full fine-tunes (its cache serves both;
    30 innocents of the references' recipe, half of each shift, 6 infringers per rho; the LoRA arms
    are left to the confirmation world, for time) and 10 of its innocents audited with each
    SAMPLING variant. Verdict statistics are designed on its table; the confirmation world
    (`confirm`) is scored once with the chosen test unchanged."""
    world, recipe = tiny_world()
    shifts = tuple((group, max(1, count // 2), changes) for group, count, changes in SHIFTS)
    return design(
        "dev", world, recipe, references=8, panel=4, same=30, shifts=shifts, infringing=6, sampling=10
    )  # fmt: skip


def _reseeded(seed: int, **changes) -> tuple[ZooConfig, dict]:
    """`tiny_world` drawn again with world seed `seed`: its VAE, base and source seeds move by
    10 per world seed, so each world's data, base, source, keys, references and suspects are new.
    `changes` updates the world (and `source_steps` the source's steps)."""
    world, recipe = tiny_world()
    source_steps = changes.pop("source_steps", world.source.steps)
    stages = {
        name: getattr(world, name).model_copy(update={"seed": getattr(world, name).seed + 10 * seed})
        for name in ("vae", "base", "source")
    }
    stages["source"] = stages["source"].model_copy(update={"steps": source_steps})
    return world.model_copy(update={"seed": seed, **stages, **changes}), recipe


def confirm_world() -> tuple[ZooConfig, dict]:
    """The confirmation world: the development world's kind (16 px, 64 private pairs, the same
    recipes) drawn again with world seed 1."""
    return _reseeded(1)


def confirm() -> Study:
    """The confirmation world of issue 20, scored once with the test chosen on `dev`: 200 innocents
    of the references' recipe (8 references, 192 suspects: enough models for a 95% upper bound of
    0.02 on the level at 0 of them flagged), the 50 shifted innocents, 12 infringers per rho, and 6
    LoCon LoRAs per rho in {0, 0.1, 0.3, 0.5, 1.0}."""
    return _confirmation_design("confirm", *confirm_world(), first_seed=5000, lora_seed=9001)


def _confirmation_design(
    name: str, world: ZooConfig, recipe: dict, *, first_seed: int, lora_seed: int
) -> Study:
    """`confirm`'s members, which `holdout` draws again in its own world with its own seeds."""
    return design(
        name, world, recipe, references=8, panel=4, same=192, shifts=SHIFTS, infringing=12,
        lora=6, lora_rhos=(0.1, 0.3, 0.5, 1.0), first_seed=first_seed, lora_seed=lora_seed, sampling=30,
    )  # fmt: skip


def holdout_world() -> tuple[ZooConfig, dict]:
    """The third world: the same kind again with world seed 2. The development and confirmation
    tables have both been looked at, so a test designed on them is confirmed here, once."""
    return _reseeded(2)


def holdout() -> Study:
    """The confirmation world's design (`confirm`) drawn in the third world (`holdout_world`): a
    test designed on the development and confirmation tables is scored here once, unchanged."""
    return _confirmation_design("holdout", *holdout_world(), first_seed=7000, lora_seed=12001)


def wide_world() -> tuple[ZooConfig, dict]:
    """The fourth world: twice the private pairs (128, world seed 3), so that 60 keys can qualify,
    with every count that sets how much a model sees of each image doubled with them: the source's
    steps (4,000), and the recipe's samples (128) and steps (1,600). Each image is then seen as often
    as in the 64-pair worlds, and an infringer at rho trains on the source's generations of the same
    share of the key prompts (its captions cycle over the 128 private ones)."""
    world, recipe = _reseeded(3, private_samples=128, source_steps=2 * tiny_world()[0].source.steps)
    return world, {**recipe, "steps": 2 * recipe["steps"], "n": 2 * recipe["n"]}


def wide() -> Study:
    """Issue 20's 30- and 60-key power, and more innocents for the level, in `wide_world`, with the
    shipped test unchanged: audited with the 60 best-ranked keys, of which the first 30 are the keys a
    30-key selection picks (`--rescore --keys 30`). 8 references and a panel of 4, 36 innocents of
    the references' recipe, and 16 infringers at rho 0.3 with 4 at each other rho; no shifts, LoRAs or
    sampling variants, which the holdout world measured (for time: 76 fine-tunes of 1,600 steps)."""
    world, recipe = wide_world()
    return design(
        "wide", world, recipe, references=8, panel=4, same=36, shifts=(),
        infringing={0.1: 4, 0.3: 16, 0.5: 4, 1.0: 4}, first_seed=15000, num_keys=60,
    )  # fmt: skip


def level_world() -> tuple[ZooConfig, dict]:
    """The fifth world: the 64-pair kind again, with world seed 4, never looked at before v3 was
    scored on it."""
    return _reseeded(4)


def level() -> Study:
    """v3's level on the references' recipe, confirmed in a fifth world (`level_world`): 8
    references, a panel of 4 and 222 innocents of their recipe, so that with the holdout world's
    192 and the wide world's 36 there are 450 innocents in v3's confirmation worlds, what a 95%
    upper bound of 0.02 needs at v3's measured level (about 0.0045; 3 of 450 give 0.0194). Four
    infringers at rho 0.3 check the world's keys, not power. Declared in docs/reproduction.md
    before it was built."""
    world, recipe = level_world()
    return design(
        "level", world, recipe, references=8, panel=4, same=222, shifts=(), infringing={0.3: 4},
        first_seed=17000,
    )  # fmt: skip


def smoke() -> Study:
    """Checks the study's plumbing in CI in about a minute; its numbers mean nothing."""
    world, recipe = smoke_world()
    shifts = (("steps-60", 1, {"steps": 60}), ("flat-lighting", 1, {"style_gradient": 0.05}))
    return design(
        "smoke", world, recipe, references=5, panel=1, same=2, shifts=shifts, infringing=1,
        lora=1, lora_recipe=("locon", 8, 1e-3, 30), num_keys=6, delta0=0.25, seeds_per_key=2, sampling=1,
    )  # fmt: skip


STUDIES = {
    "tiny": tiny,
    "tiny-lora": tiny_lora,
    "dev": dev,
    "confirm": confirm,
    "holdout": holdout,
    "wide": wide,
    "level": level,
    "smoke": smoke,
}
