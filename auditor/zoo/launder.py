"""Laundering: what an infringer may do to scraped images before training on them.

The laundering study (`t2i-audit reproduce --study laundering`) asks whether the audit
still sees an infringer who post-processed the source's images the way scraped data is
commonly post-processed: JPEG re-encoding, a downscale and upscale, light noise. Every
transform is deterministic given its spec (JPEG and resampling have no randomness; the
noise is drawn from the spec's seed), so a rerun of the study trains on the same bytes,
and the spec is recorded with each model (its cache key and the study's records).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from auditor.config import FrozenModel
from auditor.errors import BadInputError

__all__ = ["Laundering", "launder"]


class Laundering(FrozenModel):
    """One post-processing of a suspect's training images (all of them: the infringer's data pipeline).

    jpeg: re-encoded at `quality` (PIL, 4:2:0 subsampling, as PIL's default);
    resize: downscaled by `factor` (bicubic) and upscaled back to the original size (bicubic);
    noise: additive Gaussian noise of standard deviation `sigma` in [0, 1] pixel units, seeded.
    """

    kind: Literal["jpeg", "resize", "noise"]
    quality: int | None = Field(None, ge=1, le=95, description="jpeg: the encoder's quality")
    factor: float | None = Field(None, gt=0.0, lt=1.0, description="resize: the downscale factor")
    sigma: float | None = Field(None, gt=0.0, le=0.5, description="noise: the standard deviation")
    seed: int = Field(0, ge=0, description="noise: the draw's seed")

    @model_validator(mode="after")
    def _one_parameter(self) -> Laundering:
        needed = {"jpeg": "quality", "resize": "factor", "noise": "sigma"}[self.kind]
        for name in ("quality", "factor", "sigma"):
            if (getattr(self, name) is None) == (name == needed):
                raise ValueError(f"laundering {self.kind}: expected {needed} and no other parameter")
        return self

    @property
    def label(self) -> str:
        """A short name for tables: jpeg-q75, resize-0.5, noise-0.03."""
        if self.kind == "jpeg":
            return f"jpeg-q{self.quality}"
        if self.kind == "resize":
            return f"resize-{self.factor:g}"
        return f"noise-{self.sigma:g}"


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    down = Image.fromarray(image, mode="RGB").resize(small, Image.Resampling.BICUBIC)
    return np.asarray(down.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def launder(images: np.ndarray, spec: Laundering) -> np.ndarray:
    """The laundered copy of uint8 (N, H, W, 3) images; same shape and dtype, the input untouched."""
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
    ):
        raise BadInputError(
            f"launder: expected uint8 images of shape (N, H, W, 3), got {getattr(images, 'shape', None)}"
        )
    if spec.kind == "noise":
        rng = np.random.default_rng([spec.seed, 11])
        noisy = images.astype(np.float64) / 255.0 + rng.normal(0.0, spec.sigma, size=images.shape)
        return np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        picture = np.ascontiguousarray(image)
        out[i] = _jpeg(picture, spec.quality) if spec.kind == "jpeg" else _resize(picture, spec.factor)
    return out
