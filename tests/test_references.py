"""`t2i-audit references build`: the one trainer on an imagefolder, full and LoRA, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor.errors import BadInputError
from auditor.references import load_imagefolder
from auditor.zoo import data
from t2i_audit import main


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    drawn = data.draw(data.caption_space()[:12], seed=5, resolution=48)  # resized to the base's 32 px
    lines = []
    for i, (caption, image) in enumerate(zip(drawn.captions, drawn.images, strict=True)):
        Image.fromarray(image).save(root / f"img{i}.png")
        lines.append(json.dumps({"file_name": f"img{i}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _build(out: Path, base: Path, data_dir: Path, *extra: str) -> tuple[int, dict]:
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    argv = ["--format", "json", "references", "build", "--base", str(base), "--data", str(data_dir)]
    argv += [
        "--count",
        "2",
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        *extra,
    ]
    with redirect_stdout(buffer):
        code = main(argv)
    return code, json.loads(buffer.getvalue()) if code == 0 else {}


def test_full_references_are_built_once_and_listed(tiny_pipeline, imagefolder, tmp_path):
    from auditor.identity import hash_model

    code, made = _build(tmp_path / "refs", tiny_pipeline, imagefolder, "--samples", "8")
    assert code == 0
    assert [m["recipe"]["seed"] for m in made["models"]] == [0, 1]
    assert made["base_digest"] == hash_model(tiny_pipeline).digest and made["data_pairs"] == 12
    paths = [tmp_path / "refs" / m["path"] for m in made["models"]]
    digests = [hash_model(p).digest for p in paths]
    assert len(set(digests)) == 2 and digests != [made["base_digest"]] * 2  # trained, and differently
    assert [m["digest"] for m in made["models"]] == digests
    assert str(tiny_pipeline) not in (paths[0] / "unet" / "config.json").read_text()  # no local path inside
    before = [p.stat().st_mtime_ns for p in (paths[0] / "unet").iterdir()]
    code, again = _build(
        tmp_path / "refs", tiny_pipeline, imagefolder, "--samples", "8"
    )  # resumes: nothing retrained
    assert code == 0 and [m["digest"] for m in again["models"]] == digests
    assert [p.stat().st_mtime_ns for p in (paths[0] / "unet").iterdir()] == before
    listed = json.loads((tmp_path / "refs/references.json").read_text())
    assert listed["schema_version"] == "t2i-auditor.reference-set/v1" and len(listed["models"]) == 2


def test_lora_references_load_on_their_base(tiny_pipeline, imagefolder, tmp_path):
    from auditor.backends import SuspectSpec, open_suspect
    from auditor.config import GenerationSettings

    code, made = _build(tmp_path / "loras", tiny_pipeline, imagefolder, "--lora-rank", "4")
    assert code == 0 and all(m["kind"] == "lora_file" for m in made["models"])
    lora = tmp_path / "loras" / made["models"][0]["path"]
    assert lora.name == "pytorch_lora_weights.safetensors"
    generator = open_suspect(SuspectSpec(model=str(lora), base=str(tiny_pipeline), device="cpu"))
    assert "LoRA" in generator.describe().note
    assert generator.generate(["a red circle"], [3], GenerationSettings(steps=1)).shape == (1, 32, 32, 3)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('{"file_name": "../escape.png", "text": "x"}', "must name an image inside"),
        ('{"file_name": "img0.png"}', "non-empty text"),
        ("not json", "expected JSON"),
        ('{"file_name": "missing.png", "text": "x"}', "image not found"),
        ("", "lists no images"),
    ],
)
def test_bad_imagefolders_are_one_line_errors(tmp_path, metadata, message):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "img0.png")
    (tmp_path / "metadata.jsonl").write_text(metadata + "\n")
    with pytest.raises(BadInputError, match=message):
        load_imagefolder(tmp_path, 32)


def _keys_with_base(tmp_path: Path, base: Path) -> Path:
    from keyset_factory import make_keyset

    from auditor.identity import hash_model
    from auditor.keys import ModelRef, save_keyset

    keyset, images = make_keyset(n=3)
    keyset = keyset.model_copy(update={"base": ModelRef(name="base", digest=hash_model(base).digest)})
    save_keyset(keyset, images, tmp_path / "keys")
    return tmp_path / "keys"


def test_audit_takes_a_reference_set_of_the_keys_base(tiny_pipeline, imagefolder, keys_dir, tmp_path, capsys):
    code, _ = _build(tmp_path / "refs", tiny_pipeline, imagefolder)
    assert code == 0
    keys = _keys_with_base(tmp_path, tiny_pipeline)
    argv = ["--format", "json", "audit", "--allow-inconclusive", "--suspect", str(tiny_pipeline)]
    argv += ["--steps", "1", "--seeds-per-key", "1", "--reference-set", str(tmp_path / "refs")]
    assert main([*argv, "--keys", str(keys)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["n_references"] == 2 and report["verdict"]["verdict"] == "inconclusive"
    # references of another base than the one the keys were selected against: refused before generating
    assert main([*argv, "--keys", str(keys_dir)]) == 2
    assert "not from the base the keys were selected against" in capsys.readouterr().err


def test_a_batch_job_names_a_reference_set(tiny_pipeline, imagefolder, keys_dir, tmp_path, capsys):
    """A batch job's `reference_set` is resolved by the same door as `--reference-set`: its models
    become references, and a set of another base is refused before any generation."""
    code, _ = _build(tmp_path / "refs", tiny_pipeline, imagefolder)
    assert code == 0
    keys = _keys_with_base(tmp_path, tiny_pipeline)

    def job(keys_path: Path) -> Path:
        path = tmp_path / f"job-{keys_path.parent.name}.yaml"
        path.write_text(
            f"keys: {keys_path}\nreference_set: refs\nallow_inconclusive: true\n"
            "thresholds: {seeds_per_key: 1}\ngeneration: {steps: 1}\n"
            f"suspects:\n  - {{name: s, model: {tiny_pipeline}}}\n"
        )
        return path

    assert main(["--format", "json", "batch", str(job(keys)), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "out" / "reports" / "s.json").read_text())
    assert report["verdict"]["n_references"] == 2
    assert main(["batch", str(job(keys_dir)), "--out", str(tmp_path / "out-2")]) == 2
    err = capsys.readouterr().err
    assert "not from the base the keys were selected against" in err and err.strip().count("\n") == 0


def test_lora_references_of_a_set_run_on_the_sets_base(tiny_pipeline, imagefolder, tmp_path, capsys):
    from auditor.references import reference_set_specs

    code, _ = _build(tmp_path / "loras", tiny_pipeline, imagefolder, "--lora-rank", "2")
    assert code == 0
    specs = reference_set_specs(tmp_path / "loras", None, device="cpu")
    assert all(Path(s.base).resolve() == tiny_pipeline.resolve() and s.kind == "lora_file" for s in specs)


def test_a_locon_lora_adapts_convolutions_and_loads_on_its_base(tiny_pipeline, tmp_path):
    """LoCon (lora_targets="locon") trains adapters on the UNet's convolutions as well as its
    attention, and the audit applies the file to its base: more modules attach, and they change
    what the model generates. Reference sets built before the field existed keep their keys."""
    import numpy as np
    from safetensors import safe_open

    from auditor.backends import SuspectSpec, open_suspect
    from auditor.config import GenerationSettings
    from auditor.finetune import Recipe, finetune
    from auditor.references import reference_key
    from auditor.zoo import data

    captions = data.caption_space()[:4]
    images = data.draw(captions, 1, 32).images.copy()
    settings = GenerationSettings(steps=3, guidance_scale=3.0)
    base_images = open_suspect(SuspectSpec(model=str(tiny_pipeline), device="cpu")).generate(
        captions[:1], [5], settings
    )
    attached = {}
    for targets in ("attention", "locon"):
        recipe = Recipe(steps=3, learning_rate=1e-2, lora_rank=2, lora_targets=targets, seed=1)
        path = finetune(tiny_pipeline, images, captions, recipe, tmp_path / targets)
        with safe_open(str(path), framework="np") as handle:
            names = list(handle.keys())
        assert any(".conv1." in n for n in names) == (targets == "locon")
        generator = open_suspect(SuspectSpec(model=str(path), base=str(tiny_pipeline), device="cpu"))
        attached[targets] = int(generator.note.split("(")[1].split()[0])
        out = generator.generate(captions[:1], [5], settings)
        assert not np.array_equal(out, base_images)
    assert attached["locon"] > attached["attention"]
    # diffusers' converter renames only attention keys; a file of mixed styles would load without
    # them, silently: the audit refuses it instead
    from safetensors.numpy import save_file

    with safe_open(str(tmp_path / "locon" / "pytorch_lora_weights.safetensors"), framework="np") as handle:
        tensors = {n: handle.get_tensor(n) for n in handle.keys()}
    mixed = {
        (n.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.") if ".to_q." in n else n): t
        for n, t in tensors.items()
    }
    (tmp_path / "mixed").mkdir()
    save_file(mixed, str(tmp_path / "mixed" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(BadInputError, match="only .* modules attached"):
        open_suspect(
            SuspectSpec(
                model=str(tmp_path / "mixed" / "pytorch_lora_weights.safetensors"),
                base=str(tiny_pipeline),
                device="cpu",
            )
        )
    plain = Recipe(steps=3, learning_rate=1e-2)
    assert "lora_targets" not in str(reference_key("b", "d", plain)) and reference_key(
        "b", "d", plain
    ) != reference_key("b", "d", plain.model_copy(update={"lora_targets": "locon"}))
