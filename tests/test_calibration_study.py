"""The calibration study's arms and tables (fast: no model is trained)."""

from __future__ import annotations

from t2i_audit import main


def test_tiny_lora_is_tiny_without_the_full_fine_tune_suspects():
    """`tiny-lora` trains the very models `tiny` holds for its references, panel and LoRA arms,
    so its LoRA rows belong in `tiny`'s power table."""
    from auditor.reproduction.calibration_study import LORA, LORA_RHOS
    from auditor.reproduction.calibration_worlds import tiny, tiny_lora

    full = {s.name: s for s in tiny().zoo.suspects}
    part = tiny_lora()
    assert (tiny().name, part.name) == ("tiny", "tiny-lora")
    assert all(full[s.name] == s for s in part.zoo.suspects)
    roles = [m.role for m in part.members]
    assert roles.count("reference") == 8 and roles.count("panel") == 4
    loras = [s for s in part.zoo.suspects if s.lora_rank is not None]
    assert sorted(s.rho for s in loras) == sorted([0.0] * 5 + [r for r in LORA_RHOS for _ in range(5)])
    assert {(s.lora_targets, s.lora_rank, s.train.lr, s.train.steps) for s in loras} == {LORA}
    seeds = [s.train.seed for s in tiny().zoo.suspects]
    assert len(seeds) == len(set(seeds))  # no LoRA arm repeats another model's draw


def test_the_wide_world_doubles_what_sets_how_often_an_image_is_seen():
    """`wide` has twice the private pairs, so the source's steps and the recipe's samples and steps
    double with them (each image seen as often as in the 64-pair worlds); its per-rho counts leave
    the other studies' models as they were (the same seeds, in the same order)."""
    from auditor.reproduction.calibration_study import RHOS, SHIFTS, design
    from auditor.reproduction.calibration_worlds import holdout, holdout_world, tiny_world, wide

    small, recipe = tiny_world()
    study = wide()
    assert study.zoo.private_samples == 2 * small.private_samples and study.num_keys == 60
    assert study.zoo.source.steps == 2 * small.source.steps
    same = [s for s in study.zoo.suspects if s.rho == 0.0]
    assert {(s.n_samples, s.train.steps) for s in same} == {(2 * recipe["n"], 2 * recipe["steps"])}
    rhos = [m.rho for m in study.members if m.role == "infringing"]
    assert {r: rhos.count(r) for r in RHOS} == {0.1: 4, 0.3: 16, 0.5: 4, 1.0: 4}
    seeds = [s.train.seed for s in study.zoo.suspects]
    assert len(seeds) == len(set(seeds)) and study.zoo.seed not in (0, 1, 2)
    world, recipe = holdout_world()
    per_rho = design(
        "holdout",
        world,
        recipe,
        references=8,
        panel=4,
        same=192,
        shifts=(),
        infringing=dict.fromkeys(RHOS, 12),
        first_seed=7000,
    )
    as_int = design(
        "holdout", world, recipe, references=8, panel=4, same=192, shifts=(), infringing=12, first_seed=7000
    )
    assert per_rho == as_int
    # innocents added later come after every model built before, which keeps its seed
    built = holdout()
    more = design(
        "holdout", world, recipe, references=8, panel=4, same=192, shifts=SHIFTS, infringing=12,
        later_same=172, lora=6, lora_rhos=(0.1, 0.3, 0.5, 1.0), first_seed=7000, lora_seed=12001,
        sampling=30,
    )  # fmt: skip
    assert len(more.zoo.suspects) == 332 + 172 and set(built.zoo.suspects) <= set(more.zoo.suspects)
    later = [s for s in more.zoo.suspects if s not in set(built.zoo.suspects)]
    assert {s.rho for s in later} == {0.0} and later[0].name == "innocent-same-192" and len(later) == 172
    assert len({s.train.seed for s in more.zoo.suspects}) == 332 + 172
    # the holdout world's infringers keep the seeds they were trained with (after 8 + 4 + 192 + 50 models)
    built = [(s.name, s.train.seed) for s in holdout().zoo.suspects if s.name.startswith("infringing-rho")]
    assert built[0] == ("infringing-rho0.1-00", 7255) and built[-1] == ("infringing-rho1.0-11", 7302)


def test_each_world_is_drawn_afresh_and_the_level_world_holds_innocents_of_one_recipe():
    """Every world of issue 20 has a world seed and VAE, base and source seeds of its own (new
    data, source, keys and models); the level world is the 64-pair kind with 8 references, a panel
    of 4 and 222 innocents of the references' recipe, whose seeds no other model shares."""
    from auditor.reproduction.calibration_worlds import (
        confirm_world,
        holdout_world,
        level,
        level_world,
        tiny_world,
        wide_world,
    )

    worlds = [tiny_world()[0]] + [w()[0] for w in (confirm_world, holdout_world, wide_world, level_world)]
    for stage in ("vae", "base", "source"):
        assert len({getattr(w, stage).seed for w in worlds}) == len(worlds)
    assert [w.seed for w in worlds] == [0, 1, 2, 3, 4]
    small, recipe = tiny_world()
    world, level_recipe = level_world()
    assert level_recipe == recipe and world.private_samples == small.private_samples
    assert world.source.steps == small.source.steps
    study = level()
    roles = [m.role for m in study.members]
    assert (roles.count("reference"), roles.count("panel"), roles.count("innocent")) == (8, 4, 222)
    assert {m.group for m in study.members if m.role == "innocent"} == {"reference recipe"}
    assert [m.rho for m in study.members if m.role == "infringing"] == [0.3] * 4
    assert len({s.train.seed for s in study.zoo.suspects}) == len(study.zoo.suspects) == 238


def test_the_power_table_splits_full_fine_tunes_from_loras():
    from auditor.reproduction.calibration_report import POWER_HEADER, tables

    def row(group, rho, verdict):
        return {
            "role": "infringing" if rho else "innocent", "group": group, "rho": rho, "hits": 3,
            "verdict@0.01": verdict, "verdict@0.05": verdict, "p_binomial": 0.5, "p_binomial_with_base": 0.5,
        }  # fmt: skip

    rows = [
        row("lora-locon-r8", 1.0, "infringing"),
        row("reference recipe", 0.3, "not_infringing"),
        row("lora-locon-r8", 0.3, "not_infringing"),
        row("reference recipe", 0.3, "infringing"),
        row("lora-locon-r8", 0.0, "not_infringing"),
    ]
    fpr, power = tables(rows)
    assert POWER_HEADER[:3] == ["recipe", "rho", "n"]
    assert [line[:3] for line in power] == [
        ["reference recipe", "0.3", "2"],
        ["lora-locon-r8", "0.3", "1"],
        ["lora-locon-r8", "1", "1"],
    ]
    assert power[0][3].startswith("1/2") and power[2][3].startswith("1/1")
    assert [line[:2] for line in fpr if line[0] == "lora-locon-r8"] == [["lora-locon-r8", "1"]]


def test_a_scale_the_study_lacks_is_refused(capsys):
    assert main(["reproduce", "--study", "laundering", "--scale", "tiny-lora", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "--scale" in err and "tiny-lora" in err and "Traceback" not in err


def test_every_verdict_row_names_the_distance_it_was_reached_with():
    """Both studies' CSVs take their rows from `verdicts`; a row of an l2_half audit must say so."""
    from record_factory import noise_records

    from auditor.reproduction.calibration_study import verdicts
    from auditor.reproduction.calibration_worlds import smoke

    study = smoke().model_copy(update={"distance": "l2_half"})
    records = noise_records(study)
    rows = verdicts(study, records)
    judged = [m for m in study.members if m.role in ("innocent", "infringing")]
    assert len(rows) == len(judged) and {r["distance"] for r in rows} == {"l2_half"}


def test_the_study_report_states_the_keys_that_qualified_not_those_asked(tmp_path, monkeypatch):
    """A world may offer fewer qualifying keys than the study asks for (the holdout world: 13 of
    30); the report's M is the audits' own."""
    from record_factory import noise_records

    from auditor.reproduction import calibration_report
    from auditor.reproduction.calibration_report import report_stage

    monkeypatch.setattr(calibration_report, "study_table", lambda *a: None)  # needs a keyset on disk
    from auditor.reproduction.calibration_worlds import smoke

    study = smoke()
    records = noise_records(study)
    qualified = next(iter(records.values())).num_keys
    asked = study.model_copy(update={"num_keys": qualified + 4})
    text = report_stage(asked, records, tmp_path, {"machine": "test", "timings": {}}).read_text()
    assert f"M = {qualified} keys (of {qualified + 4} asked" in text
    assert f"out of M = {qualified}." in text
    same = report_stage(study, records, tmp_path, {"machine": "test", "timings": {}}).read_text()
    assert f"M = {qualified} keys, J" in same
