"""The CLI contract: exit codes, one stderr line on failure, JSON on stdout."""

import json
import shutil

import numpy as np
import pytest
from keyset_factory import make_keyset

from auditor.keys import save_keyset
from auditor.zoo import data
from t2i_audit import main


def run(capsys, *argv):
    code = main(["--format", "json", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("t2i-audit: error:")
    return lines[0]


@pytest.fixture
def keyset_dir(tmp_path):
    keyset, images = make_keyset(n=3)
    save_keyset(keyset, images, tmp_path / "keys")
    return tmp_path / "keys"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "t2i-audit" in capsys.readouterr().out


def test_unknown_option_is_bad_input(capsys):
    code, _, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", "k", "--suspect", "s", "--frobnicate"
    )
    assert code == 2
    assert "unrecognized arguments: --frobnicate" in one_line_error(err)


def test_missing_model_folder(capsys, keyset_dir, tmp_path):
    code, _, err = run(
        capsys,
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(keyset_dir),
        "--suspect",
        str(tmp_path / "none"),
    )
    assert code == 2
    assert "none: model not found" in one_line_error(err)


def test_malformed_model_folder(capsys, keyset_dir, tiny_pipeline, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline, broken)
    shutil.rmtree(broken / "unet")
    code, _, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", str(keyset_dir), "--suspect", str(broken)
    )
    assert code == 2
    assert "'unet/' is missing" in one_line_error(err)

    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text("{ not json")
    code, _, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", str(keyset_dir), "--suspect", str(broken)
    )
    assert code == 2
    # read before anything is loaded (the pipeline's default size), so the error names the file
    assert f"{broken / 'unet' / 'config.json'}: expected JSON" in one_line_error(err)


def test_tampered_keyset(capsys, keyset_dir, tiny_pipeline):
    (keyset_dir / "k000.png").write_bytes((keyset_dir / "k001.png").read_bytes())
    code, _, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", str(keyset_dir), "--suspect", str(tiny_pipeline)
    )
    assert code == 2
    assert "k000.png: sha256 does not match" in one_line_error(err)


def test_generation_follows_the_keys_size_unless_told_otherwise(capsys, tmp_path, tiny_pipeline):
    """A 32 px model audited with 16 px keys generates at 16 px (the keyset's size, as in a batch);
    a size given on the command line that differs from the keys' is refused as a mismatch."""
    keyset, images = make_keyset(n=2, size=16)
    save_keyset(keyset, images, tmp_path / "k16")
    argv = [
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(tmp_path / "k16"),
        "--suspect",
        str(tiny_pipeline),
        "--steps",
        "2",
    ]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(out)["generation"]["height"] == 16 and json.loads(out)["generation"]["width"] == 16
    code, _, err = run(capsys, *argv, "--height", "32", "--width", "32")
    assert code == 2
    assert "generated 32x32 images but the keys are 16x16" in one_line_error(err)


def test_audit_writes_a_complete_report(capsys, keyset_dir, tiny_pipeline, tmp_path):
    out = tmp_path / "report.json"
    argv = [
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(keyset_dir),
        "--suspect",
        str(tiny_pipeline),
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report == json.loads(stdout)
    assert report["schema_version"] == "t2i-auditor.report/v2"
    assert report["summary"]["num_keys"] == 3
    assert report["generation"]["steps"] == 2
    assert report["suspect"]["name"] == tiny_pipeline.name and len(report["suspect"]["digest"]) == 64
    assert str(tmp_path) not in out.read_text()  # no local paths leak into evidence
    assert len(report["audit"]["audit_nonce"]) == 32 and report["audit"]["seeds_per_key"] == 4
    all_seeds = [s for key in report["results"] for s in key["seeds"]]
    assert len(set(all_seeds)) == 3 * 4  # no two (key, j) share initial noise
    for key in report["results"]:
        assert len(key["distances"]) == 4 and key["distance"] == min(key["distances"])
        assert key["hit"] == (key["distance"] < report["audit"]["delta0"])
    # Random keys vs an untrained model: conf must be what the per-key hits say, and the
    # same audit again gives identical distances (seeded generation).
    assert report["summary"]["conf"] == sum(k["hit"] for k in report["results"]) / 3
    code, stdout2, _ = run(capsys, *argv[:-2])
    assert [k["distance"] for k in json.loads(stdout2)["results"]] == [
        k["distance"] for k in report["results"]
    ]


def test_audit_seeds_follow_the_nonce_and_avoid_the_sources_seeds(capsys, keyset_dir, tiny_pipeline):
    from auditor.audit import audit_seeds
    from auditor.keys import load_keyset

    keyset, _ = load_keyset(keyset_dir)
    argv = [
        "audit",
        "--allow-inconclusive",
        "--keys",
        str(keyset_dir),
        "--suspect",
        str(tiny_pipeline),
        "--steps",
        "1",
    ]
    code, out, _ = run(capsys, *argv, "--audit-nonce", "0" * 32, "--seeds-per-key", "2")
    assert code == 0
    seeds = {k["key_id"]: tuple(k["seeds"]) for k in json.loads(out)["results"]}
    assert seeds == audit_seeds("0" * 32, keyset.keys, 2, keyset.forbidden_seeds())
    # a seed the source used is skipped, however the derivation falls
    first = seeds["k000"][0]
    assert first not in audit_seeds("0" * 32, keyset.keys, 2, {first})["k000"]
    code, _, err = run(capsys, *argv, "--audit-nonce", "xyz")
    assert code == 2 and "field 'audit_nonce'" in one_line_error(err)


def test_random_keys_from_training_data(capsys, tmp_path, tiny_pipeline):
    captions = data.caption_space()[:12]
    data.save_dataset(data.draw(captions, seed=3), tmp_path / "train")
    out = tmp_path / "keys"
    code, stdout, err = run(
        capsys, "keys", "select", "--source", str(tiny_pipeline), "--strategy", "random",
        "--train-data", str(tmp_path / "train"), "--num-keys", "5", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["num_keys"] == 5
    code, stdout, _ = run(capsys, "keys", "digest", str(out))
    assert json.loads(stdout)["digest"] == summary["digest"]


def test_generation_keys_need_a_difference_between_source_and_base(capsys, tmp_path, tiny_pipeline):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(data.caption_space()[:4]))
    code, _, err = run(
        capsys, "keys", "select", "--source", str(tiny_pipeline), "--base", str(tiny_pipeline),
        "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "keys"),
    )  # fmt: skip
    assert code == 2
    assert "no candidate qualifies" in one_line_error(err)
    assert not (tmp_path / "keys" / "keys.json").exists()


@pytest.mark.parametrize("role", ["source", "base"])
def test_a_resaved_source_or_base_is_refused_as_a_panel_model(
    role, capsys, tmp_path, tiny_pipeline, reference_models
):
    """The panel screens keys as an innocent would: the source or base under other bytes is neither."""
    from model_copies import resaved_copy

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(data.caption_space()[:4]))
    base = reference_models[0]
    copy = resaved_copy(tiny_pipeline if role == "source" else base, tmp_path / "copy" / "pipeline", "readme")
    code, _, err = run(
        capsys, "keys", "select", "--source", str(tiny_pipeline), "--base", str(base), "--panel", str(copy),
        "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "keys"),
    )  # fmt: skip
    assert code == 2 and "is the source or the base (same bytes or same weights)" in one_line_error(err)
    assert not (tmp_path / "keys").exists()


def test_empty_prompts_file(capsys, tmp_path, tiny_pipeline):
    (tmp_path / "p.txt").write_text("\n\n")
    code, _, err = run(
        capsys, "keys", "select", "--source", str(tiny_pipeline), "--prompts", str(tmp_path / "p.txt"),
        "--out", str(tmp_path / "k"),
    )  # fmt: skip
    assert code == 2
    assert "the file has none" in one_line_error(err)


def test_schema_is_json(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert json.loads(out)["title"] == "AttributionReport"


def test_images_are_seed_deterministic_and_batch_independent(tiny_pipeline):
    from auditor.backends import TorchGenerator
    from auditor.config import GenerationSettings

    gen = TorchGenerator(tiny_pipeline, batch_size=3)
    settings = GenerationSettings(steps=3)
    prompts = ["a small red circle on a blue background"] * 3
    batch = gen.generate(prompts, [5, 6, 7], settings)
    alone = gen.generate(prompts[:1], [6], settings)
    assert batch.dtype == np.uint8 and batch.shape == (3, 32, 32, 3)
    assert np.abs(batch[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[2])
    np.testing.assert_array_equal(gen.generate(prompts, [5, 6, 7], settings), batch)


def _discriminator(path, num_keys: int, keyset_digest: str | None):
    from auditor.discriminator import Discriminator

    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.uniform(0.05, 0.12, (6, num_keys)), rng.uniform(0.2, 0.3, (6, num_keys))])
    model = Discriminator().fit(distances, np.array([1] * 6 + [0] * 6))
    model.save(path, keyset_digest=keyset_digest)
    return path


def test_audit_adds_the_discriminator_score(capsys, keyset_dir, tiny_pipeline, tmp_path):
    from auditor.keys import load_keyset

    keyset, _ = load_keyset(keyset_dir)
    disc = _discriminator(tmp_path / "disc.json", 3, keyset.digest)
    code, stdout, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", str(keyset_dir), "--suspect", str(tiny_pipeline), "--steps", "2",
        "--discriminator", str(disc),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    st = report["statistical"]
    # An untrained model is far from every key: the discriminator must call it innocent.
    assert st["decision"] == "not_infringing" and st["score"] < 0.5
    assert st["shadows"] == {"infringing": 6, "innocent": 6}
    from auditor.fileio import sha256_file

    assert st["discriminator_sha256"] == sha256_file(disc)


@pytest.mark.parametrize("problem", ["other-keyset", "other-count", "corrupt"])
def test_audit_refuses_a_bad_discriminator(capsys, keyset_dir, tiny_pipeline, tmp_path, problem):
    from auditor.keys import load_keyset

    keyset, _ = load_keyset(keyset_dir)
    disc = tmp_path / "disc.json"
    if problem == "other-keyset":
        _discriminator(disc, 3, "f" * 64)
    elif problem == "other-count":
        _discriminator(disc, 5, keyset.digest)
    else:
        _discriminator(disc, 3, keyset.digest)
        record = json.loads(disc.read_text())
        record["coef"] = record["coef"][:-1]
        disc.write_text(json.dumps(record))
    code, _, err = run(
        capsys, "audit", "--allow-inconclusive", "--keys", str(keyset_dir), "--suspect", str(tiny_pipeline), "--steps", "2",
        "--discriminator", str(disc),
    )  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and "disc.json" in line
    expected = {"other-keyset": "fit for keyset", "other-count": "fit on 5", "corrupt": "coef"}[problem]
    assert expected in line


def test_shadow_fit_refuses_a_one_class_shadow_set(capsys, keyset_dir, tiny_pipeline, tmp_path):
    shadows = tmp_path / "shadows.json"
    models = [{"name": f"s{i}", "path": str(tiny_pipeline), "label": 1} for i in range(3)]
    shadows.write_text(json.dumps({"schema_version": "t2i-auditor.shadow-set/v1", "models": models}))
    code, _, err = run(
        capsys, "shadow", "fit", "--keys", str(keyset_dir), "--shadows", str(shadows), "--out", str(tmp_path / "d")
    )  # fmt: skip
    assert code == 2 and "both infringing" in one_line_error(err)
    shadows.write_text(json.dumps({"format": "t2i-auditor-shadows-v1", "models": [{"name": "x"}]}))
    code, _, err = run(
        capsys, "shadow", "fit", "--keys", str(keyset_dir), "--shadows", str(shadows), "--out", str(tmp_path / "d")
    )  # fmt: skip
    assert code == 2 and "shadows.json" in one_line_error(err)


def test_a_bug_is_one_line_with_exit_70_and_no_secret(monkeypatch, capsys, keyset_dir):
    import t2i_audit.keys as keys_cli
    from auditor.errors import register_secret

    register_secret("hunter2-token")

    def broken(args, ctx):
        raise RuntimeError("boom with hunter2-token in it\nand a second line")

    monkeypatch.setattr(keys_cli, "cmd_keys_digest", broken)
    assert main(["keys", "digest", str(keyset_dir)]) == 70
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error: RuntimeError" in err
    assert "hunter2-token" not in err
