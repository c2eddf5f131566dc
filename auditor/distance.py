"""Reconstruction distances between images with pixels in [0, 1].

The default is Carlini et al. (2023)'s normalized L2, `sqrt(mean((x - y)^2))`: 0 for
identical images, 1 for black vs white, so delta0 = 0.15 means the same thing at any
resolution. The tiled variant takes the max over a 4x4 grid, so a copy that differs
strongly in one region (a memorized image with an edit) is not averaged away.
The pooled variants (`l2_half`, `l2_quarter`) average-pool both images before the same
normalized L2, so they compare coarse layouts: a model whose memory of a key was weakened
(fine-tuned further on other images) may still draw its composition while the pixel detail
has drifted, and pooling averages the detail away before it is compared. They stay 0 for
identical images and 1 for black vs white, but pooling also averages away pixel noise, so
innocent models sit closer to the keys too: delta0 = 0.15 is not the same threshold under
them. The verdict does not depend on it (the model-level test compares a suspect with
references audited with the same distance); the hit counts beside it do.
A distance is one object (`Distance`): its name, the settings its function is called with,
and the sha256 of any weights it loads (an embedding distance), all of which the audit
token covers (`identity`), so two audits are comparable only when they measured with the
same function, settings and weights. Reports record the name; the token pins the rest.
They are registered in one table by name so an embedding distance can be added without
touching the audit. None is shipped: the
lpips and DISTS wheels (inspected) hold only small heads and fetch their torchvision
backbone's weights at run time, which an offline audit cannot do (piq, DreamSim and CLIP
were not inspected; docs/reproduction.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from auditor.errors import BadInputError

DistanceFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Distance:
    """A registered distance: `distance(x, y)` gives one value per image pair, in [0, 1] for pixels
    in [0, 1], 0 for identical images."""

    name: str
    fn: DistanceFn = field(repr=False)
    settings: Mapping[str, int | float | str] = field(default_factory=lambda: MappingProxyType({}))
    weights_sha256: str | None = None

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.fn(x, y, **self.settings)

    def identity(self) -> dict[str, object]:
        """What the audit token records of this distance beside its name: its settings and weights
        digest, each only when it has any (so a plain distance's tokens are what they always were)."""
        out: dict[str, object] = {}
        if self.settings:
            out["settings"] = dict(sorted(self.settings.items()))
        if self.weights_sha256 is not None:
            out["weights_sha256"] = self.weights_sha256
        return out


DISTANCES: dict[str, Distance] = {}


def register_distance(
    name: str, *, weights_sha256: str | None = None, **settings: int | float | str
) -> Callable[[DistanceFn], DistanceFn]:
    """Register `fn` under `name`, called with `settings`: audits look distances up by the name their
    config records, and the audit token covers the settings and weights digest too."""

    def decorator(fn: DistanceFn) -> DistanceFn:
        DISTANCES[name] = Distance(
            name=name, fn=fn, settings=MappingProxyType(dict(settings)), weights_sha256=weights_sha256
        )
        return fn

    return decorator


def get_distance(name: str) -> Distance:
    """The registered distance `name`; an unknown name is bad input that lists the known ones."""
    try:
        return DISTANCES[name]
    except KeyError:
        raise BadInputError(f"distance {name!r}: expected one of {sorted(DISTANCES)}") from None


def available_distances() -> list[str]:
    """The registered names, sorted (for help texts and errors)."""
    return sorted(DISTANCES)


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
    """Carlini et al.'s normalized L2 per image pair: the paper's distance and the default."""
    x, y = _as_batches(x, y)
    return np.sqrt(np.mean(np.square(x - y), axis=(1, 2, 3)))


@register_distance("l2_tiled", grid=4)
def tiled_l2(x: np.ndarray, y: np.ndarray, grid: int = 4) -> np.ndarray:
    """The worst of a grid x grid tiling's normalized L2s: one strongly differing region counts."""
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


def _average_pool(x: np.ndarray, factor: int) -> np.ndarray:
    """(N, H, W, C) -> (N, H/factor, W/factor, C), each output pixel the mean of a factor x factor block."""
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise BadInputError(
            f"images: a distance pooled by {factor} needs a size divisible by {factor}, got {h}x{w}"
        )
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def pooled_l2(x: np.ndarray, y: np.ndarray, factor: int) -> np.ndarray:
    """Normalized L2 of both images average-pooled by `factor`: the coarse layout's distance, which
    pixel detail that drifted (a weakened memory, a re-encoding) does not dominate."""
    x, y = _as_batches(x, y)
    return normalized_l2(_average_pool(x, factor), _average_pool(y, factor))


def half_l2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`pooled_l2` by 2: at 16 px it compares 8x8 layouts, at 512 px 256x256 ones."""
    return pooled_l2(x, y, 2)


def quarter_l2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`pooled_l2` by 4: at 16 px it compares 4x4 layouts, where only the composition is left."""
    return pooled_l2(x, y, 4)


register_distance("l2_half", factor=2)(pooled_l2)
register_distance("l2_quarter", factor=4)(pooled_l2)
