"""The key-selection use case (auditor.key_selection.Selection): one door, and the divergences it closed.

The CLI, the demo and both studies once selected keys with their own copies of the same steps,
and the copies disagreed: the SDXL size conditioning was recorded by two of them, the refusal
of a panel model that is the source or the base by one, and the content digest by the two
that used `identify`. Each test here is one of those, asked of the library door itself, and
the structural tests keep the door single.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from auditor.backends import SuspectSpec
from auditor.errors import BadInputError
from auditor.key_selection import Selection
from auditor.keys import load_keyset
from auditor.selection import SelectionConfig
from auditor.zoo import data

ROOT = Path(__file__).resolve().parents[1]


def _random(source: Path, tmp_path: Path, **fields) -> Selection:
    train = data.draw(data.caption_space()[:3], seed=0, resolution=32)
    return Selection(
        SelectionConfig(strategy="random", num_keys=2),
        source=SuspectSpec(model=str(source), device="cpu"),
        prompts=list(train.captions),
        train_images=train.images,
        **fields,
    )


def test_an_sdxl_source_records_its_size_conditioning_whoever_selects(tmp_path, tiny_xl_pipeline):
    from auditor.config import GenerationSettings

    keyset, _ = _random(tiny_xl_pipeline, tmp_path, settings=GenerationSettings(steps=2)).run()
    g = keyset.generation
    assert (g.original_size, g.crops_coords_top_left, g.target_size) == ((32, 32), (0, 0), (32, 32))


def test_an_sd_source_records_no_size_conditioning(tmp_path, tiny_pipeline):
    from auditor.config import GenerationSettings

    keyset, _ = _random(tiny_pipeline, tmp_path, settings=GenerationSettings(steps=2)).run()
    assert keyset.generation.original_size is None and keyset.generation.target_size is None


@pytest.mark.parametrize("role", ["source", "base"])
def test_a_resaved_source_or_base_is_refused_as_a_panel_model_by_the_door(
    role, tmp_path, tiny_pipeline, reference_models
):
    from model_copies import resaved_copy

    base = reference_models[0]
    copy = resaved_copy(tiny_pipeline if role == "source" else base, tmp_path / "copy" / "pipeline", "readme")
    selection = Selection(
        SelectionConfig(strategy="generation", num_keys=2),
        source=SuspectSpec(model=str(tiny_pipeline), device="cpu"),
        prompts=data.caption_space()[:4],
        base=SuspectSpec(model=str(base), device="cpu"),
        panel=[SuspectSpec(model=str(copy), device="cpu")],
        panel_labels=["study x: panel model p"],
    )
    with pytest.raises(BadInputError, match=r"^study x: panel model p: is the source or the base"):
        selection.run(tmp_path / "keys")
    assert not (tmp_path / "keys").exists()


def test_every_model_is_recorded_by_both_digests_and_named_as_asked(
    tmp_path, tiny_pipeline, reference_models
):
    from auditor.identity import hash_model

    selection = _random(
        tiny_pipeline,
        tmp_path,
        base=SuspectSpec(model=str(reference_models[0]), device="cpu"),
        source_name="src",
    )
    source, base, panel = selection.refs()
    expected = hash_model(tiny_pipeline)
    assert (source.name, source.digest, source.content_digest) == (
        "src",
        expected.digest,
        expected.content_digest,
    )
    assert base is not None and base.content_digest == hash_model(reference_models[0]).content_digest
    assert panel == []


def test_a_keyset_is_written_once_unless_replaced(tmp_path, tiny_pipeline):
    first, _ = _random(tiny_pipeline, tmp_path).run(tmp_path / "keys")
    assert load_keyset(tmp_path / "keys")[0].digest == first.digest
    with pytest.raises(BadInputError, match="a keyset already exists there"):
        _random(tiny_pipeline, tmp_path).run(tmp_path / "keys")
    again, _ = _random(tiny_pipeline, tmp_path).run(tmp_path / "keys", replace=True)
    assert again.digest == first.digest


def _calls(name: str) -> list[str]:
    """Modules of the three packages that call `name` (a function or class) by that name."""
    found = []
    for package in ("auditor", "export", "t2i_audit"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                    if called == name:
                        found.append(str(path.relative_to(ROOT)))
                        break
    return found


def test_keys_are_selected_through_one_door():
    assert _calls("select_keys") == ["auditor/key_selection.py"]
    assert set(_calls("Selection")) == {
        "auditor/demo.py",
        "auditor/reproduction/calibration_study.py",
        "auditor/reproduction/experiment.py",
        "t2i_audit/keys.py",
    }


def test_a_model_becomes_a_model_ref_in_one_place():
    assert _calls("ModelRef") == ["auditor/backends/_factory.py"]
