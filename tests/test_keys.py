import json

import numpy as np
import pytest
from keyset_factory import make_keyset

from auditor.errors import BadInputError
from auditor.images import encode_png
from auditor.keys import load_keyset, save_keyset


def test_round_trip_preserves_keys_images_and_digest(tmp_path):
    keyset, images = make_keyset()
    digest = save_keyset(keyset, images, tmp_path / "ks")
    loaded, loaded_images = load_keyset(tmp_path / "ks")
    assert loaded == keyset
    assert loaded.digest == digest and len(digest) == 64
    np.testing.assert_array_equal(loaded_images, images)


def test_digest_changes_with_any_field():
    keyset, _ = make_keyset()
    changed = keyset.model_copy(
        update={"keys": (keyset.keys[0].model_copy(update={"seed": 7}), *keyset.keys[1:])}
    )
    assert changed.digest != keyset.digest


def test_tampered_image_is_refused(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    other = images[1].copy()
    other[0, 0, 0] ^= 1
    (tmp_path / "ks" / "k001.png").write_bytes(encode_png(other))
    with pytest.raises(BadInputError, match=r"k001\.png: sha256 does not match"):
        load_keyset(tmp_path / "ks")


def test_wrong_size_image_is_refused(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    raw = json.loads((tmp_path / "ks" / "keys.json").read_text())
    raw["height"] = raw["width"] = 64
    (tmp_path / "ks" / "keys.json").write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="expected 64x64 pixels, got 32x32"):
        load_keyset(tmp_path / "ks")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "expected JSON"),
        ('{"schema_version": "t2i-auditor.keyset/v9"}', "not supported"),
        ('{"schema_version": "t2i-auditor.keyset/v1", "strategy": "guess"}', "field 'strategy'"),
    ],
)
def test_malformed_keys_json(tmp_path, content, message):
    (tmp_path / "keys.json").write_text(content)
    with pytest.raises(BadInputError, match=message):
        load_keyset(tmp_path)


def test_missing_image_and_missing_folder(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    (tmp_path / "ks" / "k002.png").unlink()
    with pytest.raises(BadInputError, match="k002.png: image file not found"):
        load_keyset(tmp_path / "ks")
    with pytest.raises(BadInputError, match="keys.json, none found"):
        load_keyset(tmp_path / "nowhere")


def test_save_refuses_to_overwrite(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    with pytest.raises(BadInputError, match="already exists"):
        save_keyset(keyset, images, tmp_path / "ks")


def test_unknown_field_is_rejected(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    raw = json.loads((tmp_path / "ks" / "keys.json").read_text())
    raw["keys"][0]["bonus"] = 1
    (tmp_path / "ks" / "keys.json").write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="keys.0.bonus"):
        load_keyset(tmp_path / "ks")


def test_keysets_written_before_the_panel_existed_keep_their_digest(tmp_path):
    """A v1 keys.json has no panel fields; its digest (and so its published commitment) must not move."""
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    written = json.loads((tmp_path / "ks/keys.json").read_text())
    assert "panel" not in written["selection"] and "panel_rejected" not in written["selection"]
    from auditor.fileio import canonical_json, sha256_bytes

    assert keyset.digest == sha256_bytes(canonical_json(written))  # the v1 rule: the file's canonical JSON
    from auditor.keys import ModelRef

    screened = keyset.model_copy(
        update={
            "selection": keyset.selection.model_copy(
                update={"panel": (ModelRef(name="p", digest="c" * 64),), "panel_rejected": 2}
            )
        }
    )
    assert screened.digest != keyset.digest
    save_keyset(screened, images, tmp_path / "ks2")
    assert load_keyset(tmp_path / "ks2")[0] == screened


def test_a_panel_drops_the_candidates_it_reproduces(tiny_pipeline, reference_models):
    from auditor.backends import SuspectSpec, open_suspect
    from auditor.config import GenerationSettings
    from auditor.keys import ModelRef
    from auditor.selection import SelectionConfig, select_keys

    source = open_suspect(SuspectSpec(model=str(tiny_pipeline), device="cpu"))
    base = open_suspect(SuspectSpec(model=str(reference_models[0]), device="cpu"))
    settings = GenerationSettings(steps=2)
    prompts = [f"a small red circle on a blue background {i}" for i in range(4)]
    config = SelectionConfig(
        strategy="generation", num_keys=4, delta0=0.25
    )  # untrained: seeds 0.233 apart, base 0.270
    ref = ModelRef(name="m", digest="d" * 64)
    keyset, _ = select_keys(
        config, source=source, source_ref=ref, settings=settings, prompts=prompts, base=base, base_ref=ref
    )
    assert keyset.selection.panel_rejected == 0 and len(keyset.keys) >= 1
    # a panel model that draws what the source draws reproduces every candidate: none is left
    with pytest.raises(BadInputError, match="no candidate qualifies"):
        select_keys(
            config,
            source=source,
            source_ref=ref,
            settings=settings,
            prompts=prompts,
            base=base,
            base_ref=ref,
            panel=[(source, ModelRef(name="panel-0", digest="e" * 64))],
        )
