"""Reconstruction distances between images with pixels in [0, 1].

The default is Carlini et al. (2023)'s normalized L2, `sqrt(mean((x - y)^2))`: 0 for
identical images, 1 for black vs white, so delta0 = 0.15 means the same thing at any
resolution. The tiled variant takes the max over a 4x4 grid, so a copy that differs
strongly in one region (a memorized image with an edit) is not averaged away.
Distances are looked up by name so that reports can record which one was used and an
embedding distance can be registered without touching the audit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from auditor.errors import BadInputError

DistanceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
_REGISTRY: dict[str, DistanceFn] = {}


def register_distance(name: str) -> Callable[[DistanceFn], DistanceFn]:
    def decorator(fn: DistanceFn) -> DistanceFn:
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_distance(name: str) -> DistanceFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"distance {name!r}: expected one of {sorted(_REGISTRY)}") from None


def available_distances() -> list[str]:
    return sorted(_REGISTRY)


def _as_batches(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accept (H, W, C) or (N, H, W, C) on either side; broadcast a single image."""
    # float64 and C order: the summation order, and so every digit of a reported
    # distance, then depends only on the pixels, not on how the arrays were laid out.
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if y.ndim == 3:
        y = y[None]
    if x.ndim != 4 or y.ndim != 4:
        raise BadInputError(f"images: expected (N, H, W, C) arrays, got shapes {x.shape} and {y.shape}")
    if x.shape[1:] != y.shape[1:]:
        raise BadInputError(
            f"images: expected the same size, got {x.shape[1]}x{x.shape[2]}x{x.shape[3]} "
            f"and {y.shape[1]}x{y.shape[2]}x{y.shape[3]}"
        )
    if len(x) != len(y) and 1 not in (len(x), len(y)):
        raise BadInputError(f"images: batch sizes {len(x)} and {len(y)} do not match")
    return x, y


@register_distance("l2")
def normalized_l2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = _as_batches(x, y)
    return np.sqrt(np.mean(np.square(x - y), axis=(1, 2, 3)))


@register_distance("l2_tiled")
def tiled_l2(x: np.ndarray, y: np.ndarray, grid: int = 4) -> np.ndarray:
    x, y = _as_batches(x, y)
    sq = np.square(x - y)
    h, w = sq.shape[1:3]
    if h < grid or w < grid:
        raise BadInputError(f"images: tiled distance needs at least {grid}x{grid} pixels, got {h}x{w}")
    rows = np.array_split(np.arange(h), grid)
    cols = np.array_split(np.arange(w), grid)
    tiles = [
        np.sqrt(sq[:, r[0] : r[-1] + 1, c[0] : c[-1] + 1].mean(axis=(1, 2, 3))) for r in rows for c in cols
    ]
    return np.max(np.stack(tiles, axis=1), axis=1)
