from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor.errors import BadInputError
from auditor.zoo import data
from auditor.zoo.data import (
    CAPTIONS_FILE,
    COLOUR_RGB,
    CaptionedImages,
    SceneAttributes,
    caption_space,
    draw,
    load_dataset,
    parse_caption,
    render,
    save_dataset,
)

# Jitter is +-0.06 per channel; allow for uint8 rounding on top.
TOL = data.COLOUR_JITTER + 1.0 / 255
# The background also carries the lighting ramp, at most sqrt(2) * amplitude at a corner.
TOL_BG = TOL + data.LIGHTING_GRADIENT * np.sqrt(2.0)


def test_caption_space_size_order_and_uniqueness() -> None:
    captions = caption_space()
    assert len(captions) == 2 * 8 * 4 * 7 == 448
    assert len(set(captions)) == 448
    assert captions == caption_space()
    assert captions[0] == "a small red circle on a green background"
    assert all(parse_caption(c).background != parse_caption(c).colour for c in captions)


def test_parse_round_trip() -> None:
    for caption in caption_space():
        scene = parse_caption(caption)
        assert isinstance(scene, SceneAttributes)
        assert scene.caption == caption
    assert parse_caption("a large blue cross on a white background") == SceneAttributes(
        "large", "blue", "cross", "white"
    )


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "a cat",
        "a medium red circle on a green background",
        "a small pink circle on a green background",
        "a small red hexagon on a green background",
        "a small red circle on a red background",
        "a small red circle on a green background ",
        "A small red circle on a green background",
        "a small red circle on a green  background",
        "a small red circle on a green background\n",
    ],
)
def test_parse_rejects_garbage(caption: str) -> None:
    with pytest.raises(BadInputError, match="caption"):
        parse_caption(caption)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(BadInputError):
        parse_caption(None)  # type: ignore[arg-type]


def test_palette_colours_are_far_apart() -> None:
    for a, b in itertools.combinations(COLOUR_RGB.values(), 2):
        assert np.max(np.abs(np.subtract(a, b))) > 0.3


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_render_shape_dtype_range(resolution: int) -> None:
    image = render("a small red circle on a green background", np.random.default_rng(0), resolution)
    assert image.shape == (resolution, resolution, 3)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_render_rejects_bad_resolution() -> None:
    for resolution in (2, 8, 32.0):
        with pytest.raises(BadInputError, match="resolution"):
            render("a small red circle on a green background", np.random.default_rng(0), resolution)  # type: ignore[arg-type]


def test_draw_determinism_and_position_independence() -> None:
    captions = caption_space()[::37]
    a = draw(captions, seed=7)
    b = draw(captions, seed=7)
    c = draw(captions, seed=8)
    assert a.captions == tuple(captions)
    assert a.images.shape == (len(captions), 32, 32, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    # Image i depends on (seed, i, caption), not on the other captions in the batch.
    changed = list(captions)
    changed[0] = "a large black square on a white background"
    d = draw(changed, seed=7)
    assert np.array_equal(a.images[1:], d.images[1:])
    # The caption does not fix the layout: repeated draws of one caption differ.
    same = draw([captions[0]] * 4, seed=7)
    assert len({img.tobytes() for img in same.images}) == 4


def test_draw_rejects_bad_arguments() -> None:
    with pytest.raises(BadInputError):
        draw("a small red circle on a green background", seed=0)
    with pytest.raises(BadInputError):
        draw(["a small red circle on a green background"], seed=-1)
    with pytest.raises(BadInputError, match="caption"):
        draw(["a small red circle on a green background", "nonsense"], seed=0)


@pytest.mark.parametrize(("resolution", "step"), [(16, 1), (32, 3), (64, 9)])
def test_shape_is_drawn_in_caption_colour(resolution: int, step: int) -> None:
    captions = caption_space()[::step]
    dataset = draw(captions, seed=3, resolution=resolution)
    for caption, image in zip(dataset.captions, dataset.images, strict=True):
        scene = parse_caption(caption)
        pixels = image.astype(np.float64) / 255.0
        fg, bg = np.asarray(COLOUR_RGB[scene.colour]), np.asarray(COLOUR_RGB[scene.background])
        dist_fg = np.abs(pixels - fg).max(axis=2)
        dist_bg = np.abs(pixels - bg).max(axis=2)
        # The most shape-coloured pixel is the caption colour; the outer pixel ring is background.
        assert dist_fg.min() <= TOL, caption
        ring = np.concatenate([dist_bg[0], dist_bg[-1], dist_bg[:, 0], dist_bg[:, -1]])
        assert ring.max() <= TOL_BG, caption
        assert (dist_fg <= TOL).sum() >= 2, caption  # a small triangle at 16 px has only a few full pixels


def test_size_classes_do_not_overlap_in_area() -> None:
    for shape in data.SHAPES:
        areas = {}
        for size in data.SIZES:
            caption = SceneAttributes(size, "white", shape, "black").caption
            images = draw([caption] * 20, seed=11).images.astype(np.float64) / 255.0
            areas[size] = images.mean(axis=(1, 2, 3))  # white-on-black: mean intensity ~ coverage
        assert areas["small"].max() < areas["large"].min(), shape


def test_captioned_images_subset_concat_and_validation() -> None:
    dataset = draw(caption_space()[:6], seed=0, resolution=16)
    assert len(dataset) == 6
    sub = dataset.subset([4, 1])
    assert sub.captions == (dataset.captions[4], dataset.captions[1])
    assert np.array_equal(sub.images, dataset.images[[4, 1]])
    assert len(dataset.subset([])) == 0
    both = sub.concat(dataset)
    assert len(both) == 8 and both.captions[2:] == dataset.captions
    assert not dataset.images.flags.writeable
    with pytest.raises(BadInputError):
        dataset.subset([6])
    with pytest.raises(BadInputError):
        dataset.subset(np.ones(6, dtype=bool))
    with pytest.raises(BadInputError, match="resolution"):
        dataset.concat(draw(caption_space()[:1], seed=0, resolution=32))
    with pytest.raises(BadInputError):
        CaptionedImages(("x",), np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(BadInputError):
        CaptionedImages(("x",), np.zeros((1, 8, 8, 3), dtype=np.float32))


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[CaptionedImages, Path]:
    dataset = draw(caption_space()[::50], seed=5, resolution=16)
    folder = save_dataset(dataset, tmp_path / "ds")
    return dataset, folder


def _records(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / CAPTIONS_FILE).read_text().splitlines()]


def test_save_load_round_trip(saved: tuple[CaptionedImages, Path]) -> None:
    dataset, folder = saved
    records = _records(folder)
    assert [r["file"] for r in records] == [f"{i:06d}.png" for i in range(len(dataset))]
    assert [r["caption"] for r in records] == list(dataset.captions)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    loaded = load_dataset(folder)
    assert loaded.captions == dataset.captions
    assert np.array_equal(loaded.images, dataset.images)
    # Saving again over the same folder is byte-identical.
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    save_dataset(dataset, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_tampered_png_is_named(saved: tuple[CaptionedImages, Path]) -> None:
    _, folder = saved
    target = folder / "000003.png"
    raw = bytearray(target.read_bytes())
    raw[-20] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="000003.png.*sha256"):
        load_dataset(folder)


def test_missing_png_is_named(saved: tuple[CaptionedImages, Path]) -> None:
    _, folder = saved
    (folder / "000002.png").unlink()
    with pytest.raises(BadInputError, match="000002.png.*missing"):
        load_dataset(folder)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=CAPTIONS_FILE):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        "[1, 2]",
        '{"file": "000001.png", "caption": "a small red circle on a green background"}',
        '{"file": "../x.png", "caption": "a small red circle on a green background", "sha256": "'
        + "0" * 64
        + '"}',
        "",
    ],
)
def test_malformed_line_is_named(saved: tuple[CaptionedImages, Path], bad_line: str) -> None:
    _, folder = saved
    index = folder / CAPTIONS_FILE
    lines = index.read_text().splitlines()
    lines[1] = bad_line
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=rf"{CAPTIONS_FILE}:2"):
        load_dataset(folder)


def test_unparseable_caption_is_named(saved: tuple[CaptionedImages, Path]) -> None:
    _, folder = saved
    records = _records(folder)
    records[0]["caption"] = "a small red circle on a red background"
    (folder / CAPTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(BadInputError, match=rf"{CAPTIONS_FILE}:1.*caption"):
        load_dataset(folder)


def test_wrong_mode_and_size_are_named(saved: tuple[CaptionedImages, Path]) -> None:
    _, folder = saved
    records = _records(folder)

    def replace(name: str, image: Image.Image) -> None:
        image.save(folder / name)
        for r in records:
            if r["file"] == name:
                r["sha256"] = data.sha256_bytes((folder / name).read_bytes())
        (folder / CAPTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))

    replace("000004.png", Image.new("L", (16, 16)))
    with pytest.raises(BadInputError, match="000004.png.*RGB"):
        load_dataset(folder)
    replace("000004.png", Image.new("RGB", (32, 32)))
    with pytest.raises(BadInputError, match="000004.png.*size"):
        load_dataset(folder)
