"""PNG input/output on the [0, 1] float grid every backend compares on.

Generations are quantized to 8 bits before any distance is taken, so a torch, ONNX or
HTTP suspect (which can only return PNGs) are scored on the same footing, and every
regenerated image has a well-defined sha256 that a report can cite.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from auditor.documents import read_bytes
from auditor.errors import BadInputError, first_line
from auditor.fileio import atomic_write_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 64 << 20  # a 4096x4096 RGB PNG stored uncompressed is 48 MiB


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


def png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, or None when `data` does not start like a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_raw_size(data: bytes) -> int | None:
    """The bytes the PNG's IDAT stream must inflate to, from its IHDR (width, height, bit depth,
    colour type, interlace), filter bytes included; None when the header is not a valid IHDR."""
    if len(data) < 33 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace not in (0, 1):
        return None
    bits = _CHANNELS[colour] * depth
    if interlace == 0:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def check_png_inflation(data: bytes) -> str | None:
    """Why the PNG's pixel data is a decompression bomb, or None: its IDAT chunks are inflated
    with output capped one byte past what the header declares, so a 32x32 PNG whose IDAT would
    inflate to 300 MB costs a few kilobytes to refuse. PIL's own limit counts pixels, not bytes."""
    limit = png_raw_size(data)
    if limit is None:
        return None  # not a PNG PIL can decode either: PIL's error is the message
    idat = bytearray()
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        elif kind == b"IEND":
            break
        pos += 12 + length
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(bytes(idat), limit + 1)
    except zlib.error:
        return None  # corrupt: PIL says so
    if len(out) > limit:
        return f"its pixel data inflates past the {limit} bytes its header declares"
    return None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 image stacks: how visible a watermark is, or
    how far fp16 or compiled images are from fp32 ones (inf for identical stacks). numpy only, so
    the benchmarks of a bare GPU host (bench/sd15_torch.py, no scipy) can use it."""
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2) / 255.0**2
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def decode_png(data: bytes, where: str, expected: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3); any failure is one line naming `where`.

    `expected` (height, width) is checked against the PNG's header before any pixel is
    decoded, so an image declaring 20000x20000 is refused without allocating it; without
    it, PIL's decompression-bomb limit (also as a warning, which is made an error) holds.
    """
    declared = png_size(data)
    if expected is not None and declared is not None and declared != tuple(expected):
        raise BadInputError(
            f"{where}: expected {expected[0]}x{expected[1]} pixels, got {declared[0]}x{declared[1]} "
            "(read from the PNG header, nothing decoded)"
        )
    bomb = check_png_inflation(data)
    if bomb is not None:
        raise BadInputError(f"{where}: refused as a decompression bomb ({bomb})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG":
                    raise BadInputError(
                        f"{where}: expected a PNG image, found {img.format or 'another format'}"
                    )
                if expected is not None and (img.height, img.width) != tuple(expected):
                    raise BadInputError(
                        f"{where}: expected {expected[0]}x{expected[1]} pixels, got {img.height}x{img.width} "
                        "(read from the PNG header, nothing decoded)"
                    )
                img.load()
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInputError(f"{where}: refused as a decompression bomb ({first_line(exc, 160)})") from None
    except Exception as exc:  # PIL raises many types on corrupt data
        raise BadInputError(
            f"{where}: expected a PNG image, could not decode it ({type(exc).__name__}: {first_line(exc, 160)})"
        ) from None


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> bytes:
    data = encode_png(image)
    atomic_write_bytes(path, data)
    return data


def read_png(
    path: str | os.PathLike[str], expected: tuple[int, int] | None = None, max_bytes: int = MAX_PNG_BYTES
) -> tuple[np.ndarray, bytes]:
    """(pixels, file bytes) of a PNG file; missing, a folder, too large or undecodable: one line."""
    p = Path(path)
    data = read_bytes(p, "PNG image", max_bytes)
    return decode_png(data, str(p), expected), data
