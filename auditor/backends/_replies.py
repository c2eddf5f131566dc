"""What an HTTP suspect's reply may be: the checks every dialect's answer passes before it is trusted.

A server's reply is hostile until proven otherwise, whichever API it speaks, so the checks
live once here and every dialect (`_a1111`, `_comfyui`) parses through them: a JSON object of
bounded size and shape, a base64 field that decodes, bytes that are a PNG of exactly the
requested size, inflated only after the header and the compressed chunks were checked (no
decompression bombs). A failed check is a `Retryable` marked *malformed* (`network=False`):
the client retries it boundedly and then refuses it as bad input (exit 2).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from auditor.documents import parse_json
from auditor.errors import BadInputError
from auditor.images import check_png_inflation, png_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# An A1111 reply is {"images": [...], "parameters": {...}, "info": "..."}: a few hundred
# values. Far more is not an answer but an attempt to exhaust memory.
MAX_REPLY_VALUES = 100_000


class Retryable(Exception):
    """A failed attempt worth retrying; `network` marks failures a later run may not see."""

    def __init__(self, message: str, network: bool) -> None:
        super().__init__(message)
        self.network = network


def reply_object(data: bytes) -> dict:
    """The reply as a JSON object, within MAX_REPLY_VALUES values (`documents.parse_json`'s limits)."""
    try:
        obj = parse_json(data, "response", max_values=MAX_REPLY_VALUES)
    except BadInputError as exc:  # syntax, depth, number size, NaN, duplicate keys, too many values
        raise Retryable(f"malformed JSON in the {exc}", network=False) from None
    if not isinstance(obj, dict):
        raise Retryable("response is not a JSON object", network=False)
    return obj


def base64_png(encoded: str) -> bytes:
    """The PNG bytes of a base64 string (a `data:` URL prefix allowed)."""
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        png = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Retryable("malformed base64 image in the response", network=False) from None
    return checked_png(png)


def checked_png(png: bytes) -> bytes:
    """`png` if it starts as a PNG does."""
    if not png.startswith(PNG_MAGIC):
        raise Retryable("returned image is not a PNG", network=False)
    return png


def decode_png(png: bytes, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3) pixels of a returned PNG: its size checked from the header and its
    compressed chunks checked for bombs before PIL inflates anything."""
    from PIL import Image

    declared = png_size(png)  # from the header bytes, before PIL even opens it
    if declared is not None and declared != (height, width):
        raise Retryable(
            f"returned image is {declared[1]}x{declared[0]}, requested {width}x{height}", network=False
        )
    bomb = check_png_inflation(png)  # before PIL inflates anything
    if bomb is not None:
        raise Retryable(f"returned PNG refused as a decompression bomb ({bomb})", network=False)
    try:
        with Image.open(io.BytesIO(png)) as img:
            if img.format != "PNG":
                raise Retryable("returned image is not a PNG", network=False)
            if img.size != (width, height):  # checked from the header, before decoding pixels
                raise Retryable(
                    f"returned image is {img.size[0]}x{img.size[1]}, requested {width}x{height}",
                    network=False,
                )
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Retryable:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data, DecompressionBombError included
        raise Retryable(f"undecodable PNG ({type(exc).__name__})", network=False) from None
