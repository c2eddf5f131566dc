"""PNG input/output on the [0, 1] float grid every backend compares on.

Generations are quantized to 8 bits before any distance is taken, so a torch, ONNX or
HTTP suspect (which can only return PNGs) are scored on the same footing, and every
regenerated image has a well-defined sha256 that a report can cite.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes


def quantize(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounding half to even like PIL's conversion.

    NaN or infinite pixels (fp16 overflow, broken weights) are refused: clipped, they would
    become black images, and a black regeneration is far from every key, which reads as
    "not infringing".
    """
    arr = np.asarray(images, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        count = len(arr) if arr.ndim else 1
        bad = int((~finite).reshape(count, -1).any(axis=1).sum()) if arr.ndim else 1
        raise BadInputError(
            f"{bad} of {count} generated images hold NaN or inf (fp16 overflow or broken weights), which would"
            " be saved as black images; rerun with --dtype float32 or check the model's weights"
        )
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32) / 255.0


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes, with no timestamps or metadata so bytes are reproducible."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3); any decoding failure names `where`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadInputError(f"{where}: expected a PNG image, could not decode it ({exc})") from None


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> bytes:
    data = encode_png(image)
    atomic_write_bytes(path, data)
    return data


def read_png(path: str | os.PathLike[str]) -> tuple[np.ndarray, bytes]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{p}: image file not found") from None
    return decode_png(data, str(p)), data
