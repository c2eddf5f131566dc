"""Baseline 1's watermark: embedding is decodable, clean images read as chance, keys matter."""

from __future__ import annotations

import numpy as np
import pytest

from auditor import watermark as wm
from auditor.zoo import data


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return data.draw(data.caption_space()[:200], seed=11, resolution=32).images


def test_marked_images_decode_and_clean_ones_read_as_chance(images):
    spec = wm.WatermarkSpec()
    clean = wm.bit_accuracy(images, spec)
    marked = wm.bit_accuracy(wm.embed(images, spec), spec)
    assert 0.4 < clean.mean() < 0.6
    assert marked.mean() > 0.9
    threshold = wm.detection_threshold(clean, 0.01)
    assert (marked > threshold).mean() > 0.9
    assert (clean > threshold).mean() <= 0.01 + 1e-9


def test_decoding_needs_the_key(images):
    marked = wm.embed(images, wm.WatermarkSpec(key=1))
    assert 0.35 < wm.bit_accuracy(marked, wm.WatermarkSpec(key=2)).mean() < 0.65


def test_the_mark_is_faint_but_not_free(images):
    marked = wm.embed(images, wm.WatermarkSpec())
    assert 18.0 < wm.psnr(marked, images) < 40.0
    assert wm.psnr(images, images) == float("inf")


def test_bits_round_trip_for_any_string(images):
    bits = "01" * 16
    spec = wm.WatermarkSpec(bits=bits, margin=0.3)
    decoded = wm.decode(wm.embed(images[:20], spec), spec)
    assert decoded.shape == (20, 32)
    expected = np.array([b == "1" for b in bits])
    assert (decoded == expected).mean() > 0.95


def test_bad_input_is_refused(images):
    with pytest.raises(ValueError, match="0s and 1s"):
        wm.WatermarkSpec(bits="0102")
    with pytest.raises(ValueError, match="square RGB"):
        wm.embed(images[:, :, :16], wm.WatermarkSpec())
    with pytest.raises(ValueError, match="fewer than 32 bits"):
        wm.embed(images, wm.WatermarkSpec(max_frequency=3))
    with pytest.raises(ValueError, match="no clean images"):
        wm.detection_threshold(np.array([]))
