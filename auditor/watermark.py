"""Baseline 1 of the paper: a 32-bit watermark injected into every image the source hands out.

The paper's watermark baseline (Luo et al. 2023) is what an owner could do if they
were willing to alter their outputs: embed a fixed bit string in every generated image,
then look for it in what a suspect generates. It is the ceiling the injection-free
method is compared against, not part of the method.

This is a keyed spread-spectrum watermark (Cox et al. 1997) in the image's
low-frequency DCT band, the band a latent-diffusion VAE keeps (a 4x-downsampling
autoencoder cannot carry fine, high-frequency marks into what the model learns). Each of
the 32 bits owns one of 32 orthonormal carriers drawn from the key. A fixed additive
pattern was tried first and failed: on these flat synthetic scenes the image's own
low-frequency content swamps it (at 31 dB PSNR, 29% of marked images decoded above the
1%-FPR threshold), hence informed embedding below. Decoding projects the image's band
onto each carrier and reads the signs; it is blind (no original needed).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import Field, field_validator
from scipy.fft import dctn, idctn

from auditor.config import FrozenModel
from auditor.images import psnr  # noqa: F401  (how visible a mark is; re-exported)


class WatermarkSpec(FrozenModel):
    bits: str = Field(
        "10110010011100001111010110001101",
        description="the owner's bit string (32 bits in the paper)",
    )
    key: int = Field(0, description="secret seed of the carriers; decoding needs the same key")
    margin: float = Field(
        0.1, gt=0.0, lt=4.0, description="minimum projection on each carrier, in orthonormal DCT units"
    )
    max_frequency: int = Field(
        10, ge=2, le=64, description="band: DCT indices u + v in [1, max_frequency], DC excluded"
    )

    @field_validator("bits")
    @classmethod
    def _binary(cls, value: str) -> str:
        if not value or set(value) - {"0", "1"}:
            raise ValueError("expected a string of 0s and 1s")
        return value

    @property
    def signs(self) -> np.ndarray:
        return np.array([1.0 if b == "1" else -1.0 for b in self.bits])


def _band(size: int, max_frequency: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    mask = ((u + v) >= 1) & ((u + v) <= max_frequency)
    return u[mask], v[mask]


@lru_cache(maxsize=16)
def _carriers(size: int, n_bits: int, key: int, max_frequency: int) -> np.ndarray:
    """(n_bits, band size) orthonormal carriers over the band's DCT coefficients."""
    dims = len(_band(size, max_frequency)[0])
    if dims < n_bits:
        raise ValueError(
            f"watermark: the DCT band holds {dims} coefficients at {size} px, fewer than {n_bits} bits"
        )
    rng = np.random.default_rng([key, size, max_frequency])
    q, _ = np.linalg.qr(rng.standard_normal((dims, n_bits)))
    return q.T.copy()


def _check(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"watermark: expected square RGB images (N, S, S, 3), got shape {images.shape}")


def _projections(grey: np.ndarray, spec: WatermarkSpec) -> tuple[np.ndarray, np.ndarray]:
    size = grey.shape[-1]
    carriers = _carriers(size, len(spec.bits), spec.key, spec.max_frequency)
    u, v = _band(size, spec.max_frequency)
    return dctn(grey, axes=(-2, -1), norm="ortho")[..., u, v] @ carriers.T, carriers


def embed(images: np.ndarray, spec: WatermarkSpec) -> np.ndarray:
    """Watermarked copies of uint8 RGB images (the same grey change on every channel).

    Informed embedding (Cox, Miller and Bloom): each carrier's projection is pushed to at
    least `margin` on the side its bit names, so the image's own content cannot flip a
    bit, and components already beyond the margin are left alone.
    """
    _check(images)
    size = images.shape[1]
    pixels = np.asarray(images, dtype=np.float64) / 255.0
    z, carriers = _projections(pixels.mean(axis=-1), spec)
    signs = spec.signs[None, :]
    change = signs * np.maximum(spec.margin - signs * z, 0.0)  # (N, bits)
    coefficients = np.zeros((len(images), size, size))
    u, v = _band(size, spec.max_frequency)
    coefficients[:, u, v] = change @ carriers
    delta = idctn(coefficients, axes=(1, 2), norm="ortho")[..., None]
    return np.clip(np.rint((pixels + delta) * 255.0), 0, 255).astype(np.uint8)


def decode(images: np.ndarray, spec: WatermarkSpec) -> np.ndarray:
    """Decoded bits, (N, n_bits) booleans, from uint8 RGB images."""
    _check(images)
    projections, _ = _projections(np.asarray(images, dtype=np.float64).mean(axis=-1) / 255.0, spec)
    return projections > 0


def bit_accuracy(images: np.ndarray, spec: WatermarkSpec) -> np.ndarray:
    """Per image, the share of bits that match the owner's string (0.5 is chance)."""
    expected = spec.signs > 0
    return (decode(images, spec) == expected[None, :]).mean(axis=1)


def detection_threshold(clean_accuracies: np.ndarray, false_positive_rate: float = 0.01) -> float:
    """A bit accuracy that unmarked images exceed with probability at most `false_positive_rate`.

    Set on images known to be clean (the public data), never on suspects: the same
    rule as delta0, a per-query threshold fixed before any suspect is seen.
    """
    clean = np.sort(np.asarray(clean_accuracies, dtype=np.float64))
    if clean.size == 0:
        raise ValueError("watermark: no clean images to set the detection threshold on")
    quantile = float(np.quantile(clean, 1.0 - false_positive_rate, method="higher"))
    return quantile
