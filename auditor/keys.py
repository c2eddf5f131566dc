"""Key samples: the owner's secret (prompt, seed, settings, image) triples, as a folder.

A keyset is `keys.json` plus one PNG per key. Its digest is the sha256 of the canonical
JSON of `keys.json` (which holds every image's sha256), so one short hex string pins
every prompt, seed, setting and pixel: a report cites it, and a salted commitment to it
can be published before an audit without revealing the keys. Loading re-hashes every
image: a keyset that was edited after selection is refused, not silently used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictInt, field_validator

from auditor.config import FrozenModel, GenerationSettings
from auditor.documents import load_document, read_bytes
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.images import MAX_PNG_BYTES, decode_png, save_png
from auditor.text import unsafe_char

KEYSET_SCHEMA = "t2i-auditor.keyset/v1"
KEYS_FILE = "keys.json"
Strategy = Literal["detection", "generation", "random"]


class ModelRef(FrozenModel):
    """A model as reports cite it: a display name and its digests (never a local path).

    `digest` pins every byte of every file (auditor.identity's manifest digest); `content_digest`
    pins the weights alone, so a model re-saved with other metadata or by another library
    version keeps it. None where there is nothing to hash (an HTTP endpoint) or where the
    document predates it.
    """

    name: str
    digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    content_digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Key(FrozenModel):
    id: str = Field(pattern=r"^k[0-9]{3,6}$")
    prompt: str = Field(min_length=1)
    # Strict: `true` or `3.0` is not a seed (lax pydantic would read them as 1 and 3).
    seed: StrictInt = Field(ge=0, lt=2**63, description="the seed the source generated the key image with")
    selection_seeds: tuple[Annotated[StrictInt, Field(ge=0, lt=2**63)], ...] = Field(
        description="every seed selection used; audits must avoid them"
    )
    image: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.png$")
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    score: float | None = Field(
        None, allow_inf_nan=False, description="selection margin: base distance minus source distance"
    )
    source_distance: float | None = Field(None, allow_inf_nan=False)
    base_distance: float | None = Field(None, allow_inf_nan=False)

    @field_validator("prompt")
    @classmethod
    def _printable_prompt(cls, prompt: str) -> str:
        """A control or bidi character would make a terminal or a report page show another prompt
        than the one committed to; refused (older keysets holding one must be re-made)."""
        bad = unsafe_char(prompt)
        if bad is not None:
            raise ValueError(f"holds a control or bidi character ({bad}); prompts are one line of plain text")
        return prompt


class SelectionRecord(FrozenModel):
    delta0: float = Field(allow_inf_nan=False)
    distance: str
    requested: int
    candidates: int
    eligible: int
    panel: tuple[ModelRef, ...] = Field(
        (), description="innocent fine-tunes that screened the candidates; never calibration references"
    )
    panel_rejected: int = Field(0, ge=0, description="eligible candidates the panel reproduced, dropped")


class KeySet(FrozenModel):
    schema_version: Literal["t2i-auditor.keyset/v1"] = KEYSET_SCHEMA
    strategy: Strategy
    source: ModelRef
    base: ModelRef | None = None
    generation: GenerationSettings
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    selection: SelectionRecord
    keys: tuple[Key, ...] = Field(min_length=1)

    @property
    def digest(self) -> str:
        return keyset_digest(self)

    def forbidden_seeds(self) -> set[int]:
        return {s for key in self.keys for s in (key.seed, *key.selection_seeds)}


def keyset_document(keyset: KeySet) -> dict:
    """keys.json's content. Fields added after v1 are left out while at their defaults, so every
    keyset written before them keeps its digest (and its published commitment)."""
    data = keyset.model_dump(mode="json")
    for name, default in _ADDED_SELECTION_DEFAULTS.items():
        if data["selection"][name] == default:
            del data["selection"][name]
    for ref in (data["source"], data["base"], *data["selection"].get("panel", ())):
        if ref is not None and ref["content_digest"] is None:
            del ref["content_digest"]
    return data


_ADDED_SELECTION_DEFAULTS = {"panel": [], "panel_rejected": 0}  # as JSON


def keyset_digest(keyset: KeySet) -> str:
    return sha256_bytes(canonical_json(keyset_document(keyset)))


def save_keyset(keyset: KeySet, images: np.ndarray, directory: str | os.PathLike[str]) -> str:
    """Write the PNGs, then keys.json last: a folder without keys.json is not a keyset."""
    out = Path(directory)
    if (out / KEYS_FILE).exists():
        raise BadInputError(f"{out / KEYS_FILE}: a keyset already exists here; choose another --out")
    if len(images) != len(keyset.keys):
        raise ValueError(f"{len(images)} images for {len(keyset.keys)} keys")
    out.mkdir(parents=True, exist_ok=True)
    for key, image in zip(keyset.keys, images, strict=True):
        data = save_png(out / key.image, image)
        if sha256_bytes(data) != key.image_sha256:
            raise ValueError(f"{key.image}: encoded bytes do not match the recorded sha256")
    atomic_write_text(out / KEYS_FILE, json.dumps(keyset_document(keyset), indent=2) + "\n")
    return keyset.digest


class KeyImageMismatch(BadInputError):
    """A key image whose bytes do not hash to keys.json: the keyset was changed after selection.

    Bad input to an audit (exit 2); `verify --keys` turns it into a VerificationError (exit 1),
    a digest that did not verify.
    """


def load_keyset(directory: str | os.PathLike[str]) -> tuple[KeySet, np.ndarray]:
    """Parse keys.json and every image, verifying each image's sha256 (before decoding it) and size."""
    root = Path(directory)
    path = root / KEYS_FILE
    if not path.is_file():
        raise BadInputError(f"{root}: expected a keyset folder with {KEYS_FILE}, none found")
    keyset = load_document(path, KeySet, what="keyset file", version=KEYSET_SCHEMA)
    images = []
    for key in keyset.keys:
        where = root / key.image
        data = read_bytes(where, "key image", MAX_PNG_BYTES)
        if sha256_bytes(data) != key.image_sha256:  # hashed before a single pixel is decoded
            raise KeyImageMismatch(
                f"{where}: sha256 does not match keys.json (expected {key.image_sha256[:16]}..., "
                f"got {sha256_bytes(data)[:16]}...); the keyset was modified after selection"
            )
        images.append(decode_png(data, str(where), expected=(keyset.height, keyset.width)))
    return keyset, np.stack(images)
