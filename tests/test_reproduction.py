"""`t2i-audit reproduce`: the scales, the report arithmetic on synthetic audit records, the CLI.

The report stage is pure arithmetic on audit records, so it is tested here without a
model: records with known distances go in, the paper's tables must come out with the
values computed by hand. The smoke run of the whole pipeline is the slow test at the end.
"""

from __future__ import annotations

import ast
import csv
import glob
import json
from pathlib import Path

import numpy as np
import pytest

from auditor.discriminator import Discriminator
from auditor.reproduction import report as rep
from auditor.reproduction.experiment import FamilyRecord, ModelAudit, load_audits
from auditor.reproduction.scales import get_scale, smoke, tiny
from auditor.verdict_tests import DEFAULT
from t2i_audit import main

DIGEST = "0" * 64


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """One zoo cache for the three smoke runs: they share a world (VAE, base, source), and the
    calibration and laundering smokes their references, panel and two innocents, so each model
    is trained once, as it would be for a user who runs the studies one after another."""
    return tmp_path_factory.mktemp("smoke-cache")


def test_tiny_scale_counts_and_folds():
    scale = tiny()
    assert [f.name for f in scale.families] == ["v1", "v2"]
    for family in scale.families:
        names = [m.name for m in family.members]
        assert len(names) == len(set(names)) == 14
        assert {s.name for s in family.zoo.suspects} == set(names)
        for fold in (0, 1):
            members = [m for m in family.members if m.fold == fold]
            assert sorted(m.rho for m in members if m.rho > 0) == [0.3, 0.5, 0.7, 1.0]
            assert sum(m.rho == 0 for m in members) == 2
        marked = [s for s in family.zoo.suspects if s.watermark is not None]
        assert sorted(s.rho for s in marked) == [0.3, 1.0]
        assert all(m.fold is None for m in family.members if m.watermarked)
        seeds = [s.train.seed for s in family.zoo.suspects]
        assert len(seeds) == len(set(seeds))
    # The families differ in every seed, so their bases and sources differ.
    assert scale.families[0].zoo.seed != scale.families[1].zoo.seed
    with pytest.raises(ValueError, match="--scale"):
        get_scale("huge")


def _audit(family: str, name: str, role: str, rho: float, fold, distances, wm_acc=(0.5,) * 4) -> ModelAudit:
    d = tuple(float(x) for x in distances)
    return ModelAudit(
        family=family,
        name=name,
        role=role,
        rho=rho,
        fold=fold,
        digest=DIGEST,
        keysets={"generation": DIGEST, "detection": DIGEST, "random": DIGEST},
        distances={"generation": d, "detection": d, "random": tuple(min(1.0, x + 0.1) for x in d)},
        watermark_bit_accuracy=tuple(wm_acc),
        seconds=0.0,
    )


def _world(scale, rng):
    """Infringing models get d ~ 0.1 on a share rho of keys; innocent ones ~ 0.25."""
    audits, families = [], []
    m = max(scale.key_counts)
    for family in scale.families:
        families.append(
            FamilyRecord(
                family=family.name,
                zoo_config_digest=DIGEST,
                source={"name": "source", "digest": DIGEST},
                base={"name": "base", "digest": DIGEST},
                keysets={"generation": DIGEST},
                eligible={"generation": m, "detection": m, "random": m},
                candidates=64,
                watermark_threshold=0.75,
                watermark_clean_images=448,
                watermark_marked_accuracy=0.95,
                watermark_psnr_db=22.0,
            )
        )
        audits.append(_audit(family.name, "base", "base", 0.0, None, rng.uniform(0.3, 0.5, m)))
        for member in family.members:
            close = rng.random(m) < member.rho
            d = np.where(close, rng.uniform(0.05, 0.12, m), rng.uniform(0.2, 0.3, m))
            role = "watermarked" if member.watermarked else ("infringing" if member.rho else "innocent")
            wm_acc = (0.9, 0.9, 0.5, 0.5) if member.watermarked else (0.5, 0.6, 0.5, 0.5)
            audits.append(_audit(family.name, member.name, role, member.rho, member.fold, d, wm_acc))
    return families, audits


def test_report_tables_match_hand_computation(tmp_path):
    scale = smoke().model_copy(update={"delta0": 0.15})
    families, audits = _world(scale, np.random.default_rng(0))
    path = rep.report_stage(scale, families, audits, tmp_path, {"machine": "test", "timings": {}})
    text = path.read_text()
    assert "The paper's figures beside ours" in text and "> 0.6" in text

    with open(tmp_path / "figure6_conf_vs_rho.csv") as f:
        fig6 = list(csv.DictReader(f))
    v1 = [a for a in audits if a.family == "v1" and a.role == "infringing" and a.rho == 1.0]
    expected = np.mean([np.mean(np.asarray(a.distances["generation"][: scale.num_keys]) < 0.15) for a in v1])
    row = next(
        r for r in fig6 if r["family"] == "v1" and r["method"] == "generation" and float(r["rho"]) == 1.0
    )
    assert float(row["mean_conf"]) == pytest.approx(expected, abs=1e-4)
    # Watermark conf: the share of regenerations above the family's threshold (0.9 > 0.75 in 2 of 4).
    row = next(
        r for r in fig6 if r["family"] == "v1" and r["method"] == "watermark" and float(r["rho"]) == 1.0
    )
    assert float(row["mean_conf"]) == pytest.approx(0.5)
    row = next(
        r for r in fig6 if r["family"] == "v1" and r["method"] == "watermark" and float(r["rho"]) == 0.0
    )
    assert float(row["mean_conf"]) == pytest.approx(0.0)

    with open(tmp_path / "table2_distances.csv") as f:
        t2 = {(r["family"], r["model"]): r for r in csv.DictReader(f)}
    innocent = [a for a in audits if a.family == "v2" and a.role == "innocent"]
    d = np.concatenate([np.asarray(a.distances["generation"][: scale.num_keys]) for a in innocent])
    assert float(t2[("v2", "innocent")][">= 0.2"]) == pytest.approx(np.mean(d >= 0.2), abs=1e-4)
    assert float(t2[("v2", "innocent")]["best"]) == pytest.approx(d.min(), abs=1e-4)

    with open(tmp_path / "table1_statistical.csv") as f:
        t1 = list(csv.DictReader(f))
    assert {(r["family"], r["method"]) for r in t1} == {
        (f, m) for f in ("v1", "v2") for m in ("discriminator", "conf")
    }
    for r in t1:  # every clean model is held out exactly once
        assert int(r["n_positive"]) == 4 and int(r["n_negative"]) == 2
    for name in ("v1-fit-without-fold0.json", "v1-fit-without-fold1.json"):
        assert Discriminator.load(tmp_path / "discriminators" / name).num_keys == scale.num_keys
    for png in ("figure6_conf_vs_rho.png", "figure7_conf_vs_keys.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "figure7_conf_vs_keys.csv") as f:
        assert {int(r["num_keys"]) for r in csv.DictReader(f)} == set(scale.key_counts)


def test_a_strategy_without_keys_is_reported_missing(tmp_path):
    scale = smoke().model_copy(update={"delta0": 0.15})
    families, audits = _world(scale, np.random.default_rng(2))
    audits = [
        a.model_copy(update={"distances": {k: v for k, v in a.distances.items() if k != "detection"}})
        for a in audits
    ]
    rep.report_stage(scale, families, audits, tmp_path, {"machine": "test", "timings": {}})
    with open(tmp_path / "figure6_conf_vs_rho.csv") as f:
        methods = {r["method"] for r in csv.DictReader(f)}
    assert methods == {"generation", "random", "watermark"}


def test_discriminator_never_sees_its_held_out_fold(tmp_path, monkeypatch):
    scale = smoke().model_copy(update={"delta0": 0.15})
    families, audits = _world(scale, np.random.default_rng(1))
    seen = []
    original = Discriminator.fit

    def spy(self, distances, labels, *args, **kwargs):
        seen.append({tuple(np.round(row, 6)) for row in np.asarray(distances)})
        return original(self, distances, labels, *args, **kwargs)

    monkeypatch.setattr(Discriminator, "fit", spy)
    rep.table1(scale, audits, tmp_path)
    folds = {
        (family, fold): {
            tuple(np.round(a.distances["generation"][: scale.num_keys], 6))
            for a in audits
            if a.family == family and a.fold == fold
        }
        for family in ("v1", "v2")
        for fold in (0, 1)
    }
    # Every fit (the discriminators and their leave-one-out calibration refits) sees one
    # fold only, so the other fold, which it scores, is truly held out.
    trained_on = set()
    for rows in seen:
        owners = [key for key, fold_rows in folds.items() if rows and rows <= fold_rows]
        assert len(owners) == 1
        trained_on.add(owners[0])
    assert trained_on == set(folds)


def test_report_stage_names_the_missing_stage(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--stage audit"):
        load_audits(smoke(), tmp_path)
    code = main(["reproduce", "--scale", "smoke", "--stage", "report", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--stage audit" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # The audit stage never trains: with nothing built it names the stage to run.
    argv = [
        "reproduce",
        "--scale",
        "smoke",
        "--stage",
        "audit",
        "--out",
        str(tmp_path),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "run the build stage first" in err and len(err.strip().splitlines()) == 1


def test_reproduce_distance_reaches_the_study_config(tmp_path, capsys, monkeypatch):
    """--distance picks the studies' audit distance (and so their audit config and token); an unknown
    name, a scale the study lacks, or --distance on the paper study is one line and exit 2."""
    from auditor.reproduction import run
    from auditor.reproduction.calibration_study import _config

    seen = []
    monkeypatch.setattr(run, "reproduce_calibration", lambda study, out, **kw: seen.append((study, kw)))
    base = ["reproduce", "--stage", "report", "--out", str(tmp_path)]
    assert main([*base, "--study", "laundering", "--scale", "tiny-further", "--distance", "l2_half"]) == 0
    assert main([*base, "--study", "calibration", "--scale", "smoke"]) == 0
    (further, kw), (calibration, _) = seen
    assert further.name == "tiny-further" and kw["kind"] == "laundering"
    assert _config(further).distance == "l2_half" and _config(calibration).distance == "l2"
    for argv, words in (
        ([*base, "--study", "laundering", "--scale", "smoke", "--distance", "l3"], "distance 'l3'"),
        ([*base, "--study", "calibration", "--scale", "tiny-further"], "tiny-further"),
        ([*base, "--scale", "smoke", "--distance", "l2_half"], "--distance"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert len(seen) == 2


def test_tiny_further_is_the_tiny_laundering_studys_members():
    """The distance comparison's subset: the same specs (so the same cache entries and models) as
    the full tiny laundering study's, which keeps its 82 models."""
    from auditor.reproduction.laundering_study import STUDIES

    full, subset = STUDIES["tiny"](), STUDIES["tiny-further"]()
    specs = {s.name: s for s in full.zoo.suspects}
    assert len(full.members) == 82 and len(subset.members) == 37
    assert all(specs[s.name] == s for s in subset.zoo.suspects)
    groups = {m.group for m in subset.members if m.role == "infringing"}
    assert groups == {"none", "further-0.5x", "further-2x"} and subset.distance == full.distance == "l2"


@pytest.mark.slow
def test_smoke_reproduction_end_to_end(tmp_path, capsys, smoke_cache):
    """The whole pipeline on the smoke scale: build, audit, report, then the discriminator in `audit`."""
    out, cache = tmp_path / "out", smoke_cache
    assert (
        main(["--format", "json", "reproduce", "--scale", "smoke", "--out", str(out), "--cache", str(cache)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["summary"].endswith("reproduction.md")
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"build", "audit", "report"}
    for family in ("v1", "v2"):
        record = json.loads((out / "audits" / family / "family.json").read_text())
        assert record["watermark_marked_accuracy"] > 0.8
    # A rerun of the audit stage reuses every record (resumable) and changes nothing.
    before = {p: p.read_bytes() for p in (out / "audits").rglob("*.json")}
    assert main(["--format", "json", "reproduce", "--scale", "smoke", "--stage", "audit", "--out", str(out),
                 "--cache", str(cache)]) == 0  # fmt: skip
    assert {p: p.read_bytes() for p in (out / "audits").rglob("*.json")} == before

    # The statistical level in a single audit: the discriminator scores the suspect in the report.
    audits = {a.name: a for a in load_audits(smoke(), out)[1] if a.family == "v1"}
    assert audits["innocent-r0-0"].role == "innocent"
    shadows = out / "shadows.json"
    assert main(["--format", "json", "shadow", "build", "--scale", "smoke", "--family", "v1", "--out",
                 str(shadows), "--cache", str(cache)]) == 0  # fmt: skip
    listed = json.loads(shadows.read_text())["models"]
    assert len(listed) == 6 and {m["label"] for m in listed} == {0, 1}
    capsys.readouterr()
    keys = out / "keys" / "v1" / "generation"
    disc = out / "disc.json"
    assert main(["--format", "json", "shadow", "fit", "--keys", str(keys), "--shadows", str(shadows), "--out",
                 str(disc), "--delta0", "0.25"]) == 0  # fmt: skip
    capsys.readouterr()
    suspect = next(m["path"] for m in listed if m["name"] == "infringing-rho1.0-r1")
    report_path = out / "report.json"
    code = main(["--format", "json", "audit", "--allow-inconclusive", "--keys", str(keys), "--suspect", suspect,
                 "--delta0", "0.25", "--discriminator", str(disc), "--out", str(report_path)])  # fmt: skip
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["statistical"]["decision"] in ("infringing", "not_infringing")
    assert 0.0 <= report["statistical"]["score"] <= 1.0
    # A discriminator fit for other keys is refused with one line naming the file.
    other = out / "keys" / "v2" / "generation"
    capsys.readouterr()
    code = main(
        [
            "audit",
            "--allow-inconclusive",
            "--keys",
            str(other),
            "--suspect",
            suspect,
            "--discriminator",
            str(disc),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "disc.json" in err and "keyset" in err


@pytest.mark.slow
def test_calibration_study_smoke_end_to_end(tmp_path, capsys, smoke_cache):
    """The calibration study's stages on its smoke scale: every model audited once, the tables and
    the plot written, and a rerun of the audit stage reuses every record."""
    import csv

    from auditor.reproduction.calibration_worlds import smoke as study_smoke

    argv = ["--format", "json", "reproduce", "--study", "calibration", "--scale", "smoke"]
    argv += ["--out", str(tmp_path / "out"), "--cache", str(smoke_cache)]
    assert main(argv) == 0
    out = tmp_path / "out" / "calibration"
    assert json.loads(capsys.readouterr().out)["summary"] == str(out / "calibration.md")
    study = study_smoke()
    rows = list(csv.DictReader((out / "calibration.csv").open()))
    judged = [m for m in study.members if m.role in ("innocent", "infringing")]
    assert sorted(r["name"] for r in rows) == sorted(m.name for m in judged)
    assert all(r["verdict@0.01"] in ("infringing", "not_infringing", "inconclusive") for r in rows)
    text = (out / "calibration.md").read_text()
    assert (
        "## False positives" in text
        and "## Power" in text
        and (out / "calibration.png").stat().st_size > 1000
    )
    before = {p: p.read_bytes() for p in (out / "audits").glob("*.json")}
    assert len(before) == len(study.members) + 1  # and the base
    assert main([*argv, "--stage", "audit"]) == 0
    assert {p: p.read_bytes() for p in (out / "audits").glob("*.json")} == before
    _check_the_study_table(out, study, capsys)


def _check_the_study_table(out, study, capsys) -> None:
    """The report stage keeps every (model, key, seed) distance; a rescore scores it without training
    and reproduces the study's own verdict rows."""
    from auditor.reproduction.records import read_table

    table = read_table(out / "distances.csv.gz")
    assert set(table.models) == {m.name for m in study.members} | {"base"}
    assert len(table.key_ids) == study.num_keys and table.delta0 == study.delta0
    for name, model in table.models.items():
        (entry,) = (out / "audits").glob(f"{glob.escape(name)}-*.json")  # the workflow's record cache
        record = json.loads(entry.read_text())["result"]
        assert list(model.distances) == record["distances"] and model.digest == record["digest"]
        assert all(len(s) == study.seeds_per_key for s in model.seeds)
    argv = [
        "--format",
        "json",
        "reproduce",
        "--study",
        "calibration",
        "--rescore",
        str(out / "distances.csv.gz"),
    ]
    capsys.readouterr()  # what the stages printed before
    assert main([*argv, "--reference-sets", "20", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    text = Path(summary).read_text()
    assert DEFAULT.method in text and "| 5 | reference recipe |" in text


@pytest.mark.slow
def test_laundering_study_smoke_end_to_end(tmp_path, capsys, smoke_cache):
    """The laundering study's stages on its smoke scale: one row per attack, each infringer's row
    naming the attack that made it, the plot written, and a rerun of the audit stage reusing every
    record. (About two minutes on one CPU thread.)"""
    import csv

    from auditor.reproduction.laundering_study import ATTACKS
    from auditor.reproduction.laundering_study import smoke as study_smoke

    argv = ["--format", "json", "reproduce", "--study", "laundering", "--scale", "smoke", "--jobs", "1"]
    argv += ["--out", str(tmp_path / "out"), "--cache", str(smoke_cache)]
    assert main(argv) == 0
    out = tmp_path / "out" / "laundering"
    assert json.loads(capsys.readouterr().out)["summary"] == str(out / "laundering.md")
    study = study_smoke()
    rows = list(csv.DictReader((out / "laundering.csv").open()))
    judged = [m for m in study.members if m.role in ("innocent", "infringing")]
    assert sorted(r["name"] for r in rows) == sorted(m.name for m in judged)
    text = (out / "laundering.md").read_text()
    for label, _, _ in ATTACKS:
        assert f"| infringing, {label} | 1 |" in text
    assert "| innocent (reference recipe) | 0 |" in text
    assert (out / "laundering.png").stat().st_size > 1000
    made = {r["name"]: r for r in rows}  # each infringer's row names the attack that made it
    launder = ast.literal_eval(made["infringing-rho1.0-jpeg-q50-00"]["launder"])
    assert launder == {"kind": "jpeg", "quality": 50, "seed": 5001}
    assert ast.literal_eval(made["infringing-rho1.0-further-2x-00"]["then"])["train"]["steps"] == 60
    before = {p: p.read_bytes() for p in (out / "audits").glob("*.json")}
    assert len(before) == len(study.members) + 1  # and the base
    assert main([*argv, "--stage", "audit"]) == 0
    assert {p: p.read_bytes() for p in (out / "audits").glob("*.json")} == before
