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
    with pytest.raises(BadInputError, match="k002.png: key image not found"):
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


# ---------------------------------------------------------------- hostile keysets


def _saved(tmp_path):
    keyset, images = make_keyset(n=3)
    save_keyset(keyset, images, tmp_path / "ks")
    return tmp_path / "ks", json.loads((tmp_path / "ks" / "keys.json").read_text())


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_a_key_image_is_hashed_before_it_is_decoded(tmp_path, monkeypatch):
    from hostile_server import png_bomb_header

    import auditor.keys as keys_module

    root, _ = _saved(tmp_path)
    (root / "k001.png").write_bytes(png_bomb_header())  # declares 20000x20000
    decoded = []
    monkeypatch.setattr(keys_module, "decode_png", lambda *a, **k: decoded.append(a) or np.zeros((32, 32, 3)))
    with pytest.raises(keys_module.KeyImageMismatch) as info:
        load_keyset(root)
    assert "k001.png: sha256 does not match" in _one_line(info)
    assert len(decoded) == 1  # k000 only: k001 was refused on its hash, undecoded


def test_a_bomb_with_a_matching_hash_is_one_line(tmp_path):
    from hostile_server import png_bomb_header

    from auditor.fileio import sha256_bytes

    root, raw = _saved(tmp_path)
    bomb = png_bomb_header()
    (root / "k001.png").write_bytes(bomb)
    raw["keys"][1]["image_sha256"] = sha256_bytes(bomb)  # the owner's own keyset holds the bomb
    (root / "keys.json").write_text(json.dumps(raw))
    with pytest.raises(BadInputError) as info:
        load_keyset(root)
    assert "k001.png: expected 32x32 pixels, got 20000x20000" in _one_line(info)
    # and without an expected size, PIL's bomb limit is a one-line refusal too
    from auditor.images import decode_png

    with pytest.raises(BadInputError, match="decompression bomb"):
        decode_png(bomb, "bomb.png")


def test_a_folder_or_a_fifo_in_place_of_a_key_image(tmp_path):
    import os
    import threading
    import time

    root, _ = _saved(tmp_path)
    (root / "k001.png").unlink()
    (root / "k001.png").mkdir()
    with pytest.raises(BadInputError) as info:
        load_keyset(root)
    assert "k001.png: is a folder" in _one_line(info)
    (root / "k001.png").rmdir()
    os.mkfifo(root / "k001.png")  # would block a plain open() until a writer comes

    def unblock() -> None:  # so that a reader that did block fails this test instead of hanging it
        time.sleep(3)
        try:
            os.close(os.open(root / "k001.png", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting: the loader never blocked

    threading.Thread(target=unblock, daemon=True).start()
    with pytest.raises(BadInputError) as info:
        load_keyset(root)
    assert "not a regular file" in _one_line(info)


def test_a_jpeg_in_place_of_a_key_png(tmp_path):
    from hostile_server import jpeg_for

    from auditor.fileio import sha256_bytes

    root, raw = _saved(tmp_path)
    jpeg = jpeg_for(32, 32)
    (root / "k000.png").write_bytes(jpeg)
    raw["keys"][0]["image_sha256"] = sha256_bytes(jpeg)
    (root / "keys.json").write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="expected a PNG image, found JPEG"):
        load_keyset(root)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_scores_are_refused(tmp_path, value):
    root, raw = _saved(tmp_path)
    text = json.dumps(raw).replace('"score": 0.1', f'"score": {value}', 1)
    (root / "keys.json").write_text(text)
    with pytest.raises(BadInputError) as info:
        load_keyset(root)
    assert "keys.json" in _one_line(info)


def test_a_non_finite_score_cannot_enter_a_keyset():
    from pydantic import ValidationError

    keyset, _ = make_keyset(n=1)
    for field in ("score", "source_distance", "base_distance"):
        with pytest.raises(ValidationError):
            type(keyset.keys[0]).model_validate({**keyset.keys[0].model_dump(), field: float("nan")})
    with pytest.raises(ValidationError):
        type(keyset.selection).model_validate({**keyset.selection.model_dump(), "delta0": float("inf")})


def test_keysets_with_sdxl_size_conditioning_record_it_and_sd_keysets_do_not(tmp_path):
    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "sd")
    written = json.loads((tmp_path / "sd/keys.json").read_text())
    assert not {"original_size", "crops_coords_top_left", "target_size"} & set(written["generation"])
    from auditor.config import GenerationSettings

    xl = keyset.model_copy(
        update={
            "generation": GenerationSettings(
                original_size=(32, 32), crops_coords_top_left=(0, 0), target_size=(32, 32)
            )
        }
    )
    save_keyset(xl, images, tmp_path / "xl")
    written = json.loads((tmp_path / "xl/keys.json").read_text())
    assert written["generation"]["original_size"] == [32, 32]
    assert xl.digest != keyset.digest
    assert load_keyset(tmp_path / "xl")[0] == xl


def test_content_digests_are_recorded_and_keysets_without_them_keep_their_digest(tmp_path):
    """keys.json leaves `content_digest` out while it is None: keysets written before it keep their
    digest (and commitment); one that records it round-trips and hashes apart."""
    from auditor.keys import ModelRef

    keyset, images = make_keyset()
    save_keyset(keyset, images, tmp_path / "ks")
    assert "content_digest" not in (tmp_path / "ks/keys.json").read_text()
    source = keyset.source.model_copy(update={"content_digest": "d" * 64})
    recorded = keyset.model_copy(update={"source": source, "base": ModelRef(name="b", digest="b" * 64)})
    save_keyset(recorded, images, tmp_path / "ks2")
    assert load_keyset(tmp_path / "ks2")[0] == recorded and recorded.digest != keyset.digest
