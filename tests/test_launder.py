"""Laundering transforms (auditor.zoo.launder) and the laundering study's definition.

The study's models are only meaningful if each attack changes the images the way it says,
the same way on every rerun, and if an unlaundered suspect keeps the cache digest it had
before laundering existed.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from auditor.errors import BadInputError
from auditor.zoo import data
from auditor.zoo.config import FurtherSpec, StageSpec, SuspectSpec
from auditor.zoo.launder import Laundering, launder


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    captions = data.caption_space()[:6]
    return data.draw(captions, seed=3, resolution=16).images.copy()


@pytest.mark.parametrize(
    "spec",
    [
        Laundering(kind="jpeg", quality=75),
        Laundering(kind="jpeg", quality=50),
        Laundering(kind="resize", factor=0.5),
        Laundering(kind="noise", sigma=0.03, seed=4),
    ],
    ids=lambda s: s.label,
)
def test_each_attack_changes_the_pixels_deterministically_and_keeps_the_shape(images, spec):
    before = images.copy()
    out = launder(images, spec)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(images, before)  # the input is not touched
    assert not np.array_equal(out, images)
    assert np.array_equal(out, launder(images, spec))  # a rerun trains on the same bytes
    change = np.sqrt(np.mean((out.astype(float) - images) ** 2)) / 255
    assert 0.002 < change < 0.15  # a laundering, not a destruction (16 px world)


def test_lower_jpeg_quality_changes_more(images):
    def rms(q: int) -> float:
        out = launder(images, Laundering(kind="jpeg", quality=q))
        return float(np.sqrt(np.mean((out.astype(float) - images) ** 2)))

    assert rms(50) > rms(75) > rms(95)


def test_noise_is_seeded_and_has_its_sigma(images):
    a = launder(images, Laundering(kind="noise", sigma=0.03, seed=1))
    b = launder(images, Laundering(kind="noise", sigma=0.03, seed=2))
    assert not np.array_equal(a, b)
    # clipping at 0 and 255 shrinks it a little; rounding adds a little
    residual = (a.astype(float) - images) / 255
    assert 0.02 < residual.std() < 0.035


def test_resize_loses_detail_a_downscale_cannot_keep():
    checker = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    checker[0, ::2, ::2] = 255
    checker[0, 1::2, 1::2] = 255
    out = launder(checker, Laundering(kind="resize", factor=0.5))
    assert out.shape == checker.shape
    assert out.astype(float).std() < 0.5 * checker.astype(float).std()


def test_a_spec_takes_exactly_its_own_parameter():
    with pytest.raises(ValidationError):
        Laundering(kind="jpeg")
    with pytest.raises(ValidationError):
        Laundering(kind="jpeg", quality=75, sigma=0.1)
    with pytest.raises(ValidationError):
        Laundering(kind="resize", factor=1.5)


def test_bad_images_are_refused_in_one_line():
    with pytest.raises(BadInputError, match="uint8"):
        launder(np.zeros((2, 16, 16, 3), dtype=np.float32), Laundering(kind="jpeg", quality=75))


def test_unlaundered_suspects_keep_their_cache_digest():
    from auditor.zoo.build import _suspect_key

    plain = SuspectSpec(name="s", rho=1.0, n_samples=8, train=StageSpec(steps=10, lr=1e-3))
    assert set(_suspect_key("b", "s", plain, _world())["suspect"]) == {"name", "rho", "n_samples", "train"}
    laundered = plain.model_copy(update={"launder": Laundering(kind="jpeg", quality=75)})
    assert _suspect_key("b", "s", laundered, _world()) != _suspect_key("b", "s", plain, _world())


def test_a_further_fine_tune_continues_a_full_one_only():
    further = FurtherSpec(n_samples=8, train=StageSpec(steps=5, lr=1e-3, seed=1))
    with pytest.raises(ValidationError, match="LoRA"):
        SuspectSpec(
            name="s", rho=1.0, n_samples=8, train=StageSpec(steps=10, lr=1e-3), lora_rank=4, then=further
        )


def _world():
    from auditor.zoo.config import PRESETS

    return PRESETS["test"]


def test_the_study_pairs_every_attack_with_the_same_infringers():
    from auditor.reproduction.laundering_study import ATTACKS, smoke, tiny

    for study in (tiny(), smoke()):
        specs = {s.name: s for s in study.zoo.suspects}
        infringers = [m for m in study.members if m.role == "infringing" and not m.group.startswith("lora")]
        assert {m.group for m in infringers} == {label for label, _, _ in ATTACKS}
        by_attack: dict[tuple[str, float], list[int]] = {}
        for m in infringers:
            by_attack.setdefault((m.group, m.rho), []).append(specs[m.name].train.seed)
        assert len({tuple(v) for v in by_attack.values()}) == 1  # the same seeds under every attack
        for m in infringers:
            spec = specs[m.name]
            if spec.launder is not None:
                assert spec.launder.seed == spec.train.seed  # recorded, so a rerun reproduces it
    # references and panel are the calibration study's (same names and specs: a shared cache)
    from auditor.reproduction.calibration_worlds import tiny as calibration_tiny

    calibration = {s.name: s for s in calibration_tiny().zoo.suspects}
    study = tiny()
    shared = [s for s in study.zoo.suspects if not s.name.startswith("infringing") and s.lora_rank is None]
    assert shared and all(calibration[s.name] == s for s in shared)
    loras = [s for s in study.zoo.suspects if s.lora_rank is not None]
    assert len(loras) == 10 and {s.lora_targets for s in loras} == {"locon"}
    assert sorted(s.rho for s in loras) == [0.0] * 5 + [1.0] * 5
    assert study.zoo.model_copy(update={"suspects": ()}) == calibration_tiny().zoo.model_copy(
        update={"suspects": ()}
    )
