"""SDXL end to end through the one workflow: keys, references build, audit, batch, shadows, verify.

Random-weight SDXL pipelines (nothing here is about the memorization signal, which the slow
integration test shows on a trained SDXL zoo): every command accepts SDXL folders, single
files and LoRAs, and the reports cite them and record SDXL's size conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2i_audit import main


@pytest.fixture(scope="module")
def world(tiny_xl_pipeline, tmp_path_factory) -> dict[str, Path]:
    """The source (tiny_xl_pipeline), its keys, five references built from an imagefolder, suspects."""
    from ldm_layout import pipeline_to_single_file

    from auditor.images import save_png
    from auditor.zoo.data import caption_space, draw, save_dataset
    from export.testing import build_tiny_xl_pipeline

    root = tmp_path_factory.mktemp("xl-world")
    captions = caption_space()[:4]
    save_dataset(draw(captions, seed=0, resolution=32), root / "train")
    folder = root / "imagefolder"
    folder.mkdir()
    images = draw(captions, seed=1, resolution=32)
    lines = []
    for i, (image, caption) in enumerate(zip(images.images, images.captions, strict=True)):
        save_png(folder / f"{i}.png", image)
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    keys = ["keys", "select", "--source", str(tiny_xl_pipeline), "--strategy", "random", "--num-keys", "2"]
    keys += [
        "--train-data",
        str(root / "train"),
        "--device",
        "cpu",
        "--steps",
        "2",
        "--out",
        str(root / "keys"),
    ]
    assert main(keys) == 0
    common = ["--base", str(tiny_xl_pipeline), "--data", str(folder), "--steps", "2", "--batch-size", "2"]
    assert (
        main(["references", "build", *common, "--count", "5", "--out", str(root / "refs"), "--device", "cpu"])
        == 0
    )
    lora = ["references", "build", *common, "--count", "1", "--lora-rank", "2", "--seed", "9"]
    assert main([*lora, "--out", str(root / "lora"), "--device", "cpu"]) == 0
    suspect = build_tiny_xl_pipeline(root / "suspect", seed=7)
    return {
        "root": root,
        "keys": root / "keys",
        "refs": root / "refs",
        "suspect": suspect,
        "single": pipeline_to_single_file(suspect, root / "suspect.safetensors"),
        "lora": next((root / "lora").rglob("*.safetensors")),
        "base": tiny_xl_pipeline,
    }


def test_references_built_on_an_sdxl_base_are_sdxl(world):
    from auditor.references import load_reference_set

    reference_set, root = load_reference_set(world["refs"])
    assert len(reference_set.models) == 5
    for model in reference_set.models:
        index = json.loads((root / model.path / "model_index.json").read_text())
        assert index["_class_name"] == "StableDiffusionXLPipeline"
    lora_set, _ = load_reference_set(world["root"] / "lora")
    assert lora_set.models[0].kind == "lora_file"


def test_an_sdxl_audit_is_reported_signed_and_verified(world, tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "owner")]) == 0
    report_path = tmp_path / "report.json"
    argv = ["audit", "--keys", str(world["keys"]), "--suspect", str(world["suspect"]), "--device", "cpu"]
    argv += ["--reference-set", str(world["refs"]), "--seeds-per-key", "1", "--out", str(report_path)]
    assert main([*argv, "--sign", str(tmp_path / "owner.key")]) == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert report["generation"]["original_size"] == [32, 32]
    assert report["generation"]["crops_coords_top_left"] == [0, 0]
    assert report["generation"]["target_size"] == [32, 32]
    assert report["suspect"]["kind"] == "diffusers_folder" and len(report["suspect"]["digest"]) == 64
    assert report["verdict"]["n_references"] == 5 and report["verdict"]["test"] is not None
    envelope = tmp_path / "report.dsse.json"
    assert (
        main(["verify", str(envelope), "--key", str(tmp_path / "owner.pub"), "--keys", str(world["keys"])])
        == 0
    )


def test_a_batch_audits_sdxl_folders_single_files_and_loras(world, tmp_path, capsys):
    from auditor.identity import hash_model

    refs = sorted(p.parent for p in world["refs"].rglob("model_index.json"))
    job = tmp_path / "job.yaml"
    job.write_text(
        f"""
keys: {world["keys"]}
references: [{", ".join(str(r) for r in refs)}]
thresholds: {{batch_size: 4, seeds_per_key: 1}}
runtime: {{device: cpu}}
suspects:
  - name: folder
    model: {world["suspect"]}
  - name: single
    model: {world["single"]}
    config: {world["base"]}
  - name: lora
    model: {world["lora"]}
    base: {world["base"]}
"""
    )
    assert main(["--format", "json", "batch", str(job), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [row["status"] for row in summary["suspects"]] == ["done", "done", "done"]
    reports = {
        n: json.loads((tmp_path / f"out/reports/{n}.json").read_text()) for n in ("folder", "single", "lora")
    }
    assert {n: r["suspect"]["kind"] for n, r in reports.items()} == {
        "folder": "diffusers_folder",
        "single": "safetensors_file",
        "lora": "lora_file",
    }
    assert reports["lora"]["suspect"]["digest"] == hash_model(world["lora"]).digest
    assert "on base model" in reports["lora"]["backend"]["note"]
    # the single file is the folder's weights: the same images, hence the same distances
    assert [k["distances"] for k in reports["single"]["results"]] == [
        k["distances"] for k in reports["folder"]["results"]
    ]


def test_shadows_fit_on_sdxl_models(world, tmp_path):
    refs = sorted(p.parent for p in world["refs"].rglob("model_index.json"))
    shadows = {
        "schema_version": "t2i-auditor.shadow-set/v1",
        "models": [
            {"name": "a", "path": str(refs[0]), "label": 1},
            {"name": "b", "path": str(refs[1]), "label": 0},
        ],
    }
    (tmp_path / "shadows.json").write_text(json.dumps(shadows))
    argv = ["shadow", "fit", "--keys", str(world["keys"]), "--shadows", str(tmp_path / "shadows.json")]
    assert main([*argv, "--out", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["num_keys"] == 2


def test_an_sdxl_shadow_with_sd_keys_of_another_size_is_refused_first(world, tmp_path, capsys, monkeypatch):
    from keyset_factory import make_keyset

    from auditor.keys import save_keyset

    keyset, images = make_keyset(n=2, size=16)
    save_keyset(keyset, images, tmp_path / "keys16")
    monkeypatch.setattr("auditor.workflow._regenerate", lambda *a, **k: pytest.fail("generated first"))
    shadows = {
        "schema_version": "t2i-auditor.shadow-set/v1",
        "models": [
            {"name": "a", "path": str(world["suspect"]), "label": 1},
            {"name": "b", "path": str(world["base"]), "label": 0},
        ],
    }
    (tmp_path / "s.json").write_text(json.dumps(shadows))
    argv = ["shadow", "fit", "--keys", str(tmp_path / "keys16"), "--shadows", str(tmp_path / "s.json")]
    assert main([*argv, "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shadow a: " in err and "SD keys of 16x16 pixels" in err
