import numpy as np
import pytest

from auditor.distance import (
    DISTANCES,
    available_distances,
    get_distance,
    half_l2,
    normalized_l2,
    pooled_l2,
    quarter_l2,
    register_distance,
    tiled_l2,
)
from auditor.errors import BadInputError

rng = np.random.default_rng(0)
A = rng.random((5, 32, 32, 3), dtype=np.float32)
B = rng.random((5, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("fn", [normalized_l2, tiled_l2, half_l2, quarter_l2])
def test_zero_on_identical_symmetric_bounded(fn):
    assert np.allclose(fn(A, A), 0.0)
    assert np.allclose(fn(A, B), fn(B, A))
    d = fn(A, B)
    assert d.shape == (5,) and np.all(d > 0) and np.all(d <= 1.0)


def test_black_vs_white_is_one():
    black, white = np.zeros((8, 8, 3)), np.ones((8, 8, 3))
    assert normalized_l2(black, white)[0] == pytest.approx(1.0)
    assert tiled_l2(black, white)[0] == pytest.approx(1.0)
    assert half_l2(black, white)[0] == pytest.approx(1.0)
    assert quarter_l2(black, white)[0] == pytest.approx(1.0)


def test_matches_carlini_formula():
    expected = np.sqrt(((A[2] - B[2]) ** 2).mean())
    assert normalized_l2(A[2], B[2])[0] == pytest.approx(expected, rel=1e-6)


def test_tiled_sees_a_local_edit_the_global_distance_averages_away():
    x = np.zeros((32, 32, 3), dtype=np.float32)
    y = x.copy()
    y[:8, :8] = 1.0  # one tile of 16 changed completely
    assert normalized_l2(x, y)[0] == pytest.approx(0.25)
    assert tiled_l2(x, y)[0] == pytest.approx(1.0)


def test_tiles_cover_non_divisible_sizes():
    x = np.zeros((30, 30, 3), dtype=np.float32)
    y = x.copy()
    y[-1, -1] = 1.0  # the last pixel must land in some tile
    assert tiled_l2(x, y)[0] > 0


def test_broadcast_single_reference():
    d = normalized_l2(A, A[1])
    assert d[1] == 0 and np.all(np.delete(d, 1) > 0)


def test_size_mismatch_is_bad_input():
    with pytest.raises(BadInputError, match="same size"):
        normalized_l2(A, np.zeros((5, 16, 16, 3)))
    with pytest.raises(BadInputError, match="batch sizes"):
        normalized_l2(A, B[:3])


def test_registry_is_pluggable(monkeypatch):
    import auditor.distance

    monkeypatch.setattr(auditor.distance, "DISTANCES", dict(DISTANCES))  # the test's row goes with it

    @register_distance("test_linf")
    def linf(x, y):
        return np.abs(np.asarray(x) - np.asarray(y)).reshape(len(x), -1).max(axis=1)

    assert "test_linf" in available_distances()
    assert get_distance("test_linf")(A, A).max() == 0
    with pytest.raises(BadInputError, match="expected one of"):
        get_distance("nope")


def test_pooled_values_by_hand():
    """A 4x4 ramp 0..15/15 against black: the 2x2 blocks' means are 2.5, 4.5, 10.5 and 12.5 (/15),
    the whole image's 7.5/15."""
    ramp = (np.arange(16, dtype=np.float64) / 15).reshape(4, 4, 1)
    black = np.zeros((4, 4, 1))
    assert half_l2(ramp, black)[0] == pytest.approx(np.sqrt((2.5**2 + 4.5**2 + 10.5**2 + 12.5**2) / 4) / 15)
    assert quarter_l2(ramp, black)[0] == pytest.approx(0.5)
    assert pooled_l2(ramp, black, 1)[0] == pytest.approx(normalized_l2(ramp, black)[0])


def test_pooling_compares_layout_not_detail():
    """A checkerboard and its inverse differ in every pixel but not in any 2x2 block's mean; a
    layout change (the bright half moved) is seen by both."""
    board = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.float64)[..., None].repeat(3, axis=2)
    assert normalized_l2(board, 1 - board)[0] == pytest.approx(1.0)
    assert half_l2(board, 1 - board)[0] == pytest.approx(0.0)
    top, bottom = np.zeros((8, 8, 3)), np.zeros((8, 8, 3))
    top[:4], bottom[4:] = 1.0, 1.0
    assert half_l2(top, bottom)[0] == pytest.approx(1.0)
    assert quarter_l2(top, bottom)[0] == pytest.approx(1.0)


def test_pooled_shape_errors_are_bad_input():
    with pytest.raises(BadInputError, match="divisible by 4"):
        quarter_l2(np.zeros((6, 6, 3)), np.zeros((6, 6, 3)))
    with pytest.raises(BadInputError, match="divisible by 2"):
        half_l2(np.zeros((5, 4, 3)), np.zeros((5, 4, 3)))
    with pytest.raises(BadInputError, match="same size"):
        half_l2(np.zeros((8, 8, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(BadInputError, match="expected"):
        half_l2(np.zeros((8, 8)), np.zeros((8, 8)))


def test_pooled_distances_are_registered_with_their_factor():
    assert {"l2_half", "l2_quarter"} <= set(available_distances())
    assert get_distance("l2_half").settings == {"factor": 2} and get_distance("l2_quarter").settings == {
        "factor": 4
    }
    assert np.array_equal(get_distance("l2_half")(A, B), half_l2(A, B))
    assert np.array_equal(get_distance("l2_quarter")(A, B), quarter_l2(A, B))


# ---------------------------------------------------------------- every registered distance
# In the manner of scikit-learn's common metric tests: each row of the table passes the same checks.

SHIPPED = ("l2", "l2_half", "l2_quarter", "l2_tiled")
EVERY = sorted(DISTANCES)


def test_the_shipped_distances_are_the_table():
    assert set(SHIPPED) <= set(EVERY)


@pytest.mark.parametrize("name", EVERY)
def test_identical_images_are_at_zero_and_pairs_are_symmetric(name):
    d = get_distance(name)
    assert d.name == name
    assert np.array_equal(d(A, A), np.zeros(len(A)))
    assert np.array_equal(d(A, B), d(B, A))


@pytest.mark.parametrize("name", EVERY)
def test_values_lie_in_the_unit_range_and_black_vs_white_is_the_top(name):
    d = get_distance(name)
    values = d(A, B)
    assert values.shape == (len(A),) and values.dtype == np.float64
    assert np.all((values > 0) & (values <= 1))
    black, white = np.zeros((16, 16, 3)), np.ones((16, 16, 3))
    assert d(black, white)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("name", EVERY)
def test_eight_bit_quantization_moves_a_distance_by_at_most_one_level(name):
    """Keys and regenerations are stored as 8-bit PNGs: rounding each pixel to 1/255 may move a
    distance by at most the rounding itself (1/255 per image), never more."""
    d = get_distance(name)

    def q(x):
        return np.round(np.asarray(x, dtype=np.float64) * 255) / 255

    assert np.all(np.abs(d(q(A), q(B)) - d(A, B)) <= 1 / 255 + 1e-12)


@pytest.mark.parametrize("name", EVERY)
def test_a_batch_is_its_pairs_and_one_image_broadcasts(name):
    d = get_distance(name)
    batch = d(A, B)
    assert np.array_equal(batch, np.array([d(a, b)[0] for a, b in zip(A, B, strict=True)]))
    assert np.array_equal(d(A, B[0]), np.array([d(a, B[0])[0] for a in A]))


@pytest.mark.parametrize("name", EVERY)
def test_the_layout_of_the_arrays_does_not_move_a_digit(name):
    d = get_distance(name)
    assert np.array_equal(d(np.asfortranarray(A), B.astype(np.float64)), d(A, B))


def test_the_audit_token_covers_settings_and_weights_but_not_a_plain_distance(monkeypatch):
    from auditor.audit import audit_token
    from auditor.config import AuditConfig, GenerationSettings
    from auditor.distance import Distance

    settings = GenerationSettings()
    plain = audit_token("a" * 64, AuditConfig(distance="l2"), settings)
    half = audit_token("a" * 64, AuditConfig(distance="l2_half"), settings)
    assert get_distance("l2").identity() == {} and get_distance("l2_half").identity() == {
        "settings": {"factor": 2}
    }
    monkeypatch.setitem(DISTANCES, "l2_half", Distance("l2_half", pooled_l2, {"factor": 4}))
    assert audit_token("a" * 64, AuditConfig(distance="l2_half"), settings) != half
    monkeypatch.setitem(DISTANCES, "l2_half", Distance("l2_half", pooled_l2, {"factor": 2}, "0" * 64))
    assert audit_token("a" * 64, AuditConfig(distance="l2_half"), settings) != half
    assert audit_token("a" * 64, AuditConfig(distance="l2"), settings) == plain
