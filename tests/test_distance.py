import numpy as np
import pytest

from auditor.distance import available_distances, get_distance, normalized_l2, register_distance, tiled_l2
from auditor.errors import BadInputError

rng = np.random.default_rng(0)
A = rng.random((5, 32, 32, 3), dtype=np.float32)
B = rng.random((5, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("fn", [normalized_l2, tiled_l2])
def test_zero_on_identical_symmetric_bounded(fn):
    assert np.allclose(fn(A, A), 0.0)
    assert np.allclose(fn(A, B), fn(B, A))
    d = fn(A, B)
    assert d.shape == (5,) and np.all(d > 0) and np.all(d <= 1.0)


def test_black_vs_white_is_one():
    black, white = np.zeros((8, 8, 3)), np.ones((8, 8, 3))
    assert normalized_l2(black, white)[0] == pytest.approx(1.0)
    assert tiled_l2(black, white)[0] == pytest.approx(1.0)


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


def test_registry_is_pluggable():
    @register_distance("test_linf")
    def linf(x, y):
        return np.abs(np.asarray(x) - np.asarray(y)).reshape(len(x), -1).max(axis=1)

    assert "test_linf" in available_distances()
    assert get_distance("test_linf")(A, A).max() == 0
    with pytest.raises(BadInputError, match="expected one of"):
        get_distance("nope")
