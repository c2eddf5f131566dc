"""Model identity by hashing, in the manner of sigstore's model_signing.

A report that says "model X was trained on the owner's images" is only evidence if X
is pinned down beyond dispute. A model is therefore identified by a manifest: every
file it consists of, by relative path, sha256 and size, and one digest over that
manifest. The digest does not depend on where the model lies on disk, on the folder's
name, or on the order files were written, but any changed byte, renamed, added or
removed file changes it.

Beside that byte digest, the same read gives the *content digest* of the weights alone
(`auditor.weights`: tensor names, dtypes, shapes and data), which a re-save, new
metadata or another library version does not change. Pickled weights are checked with
torch's `weights_only` unpickler or refused (`auditor.weights`), never loaded otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.weights import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    TensorDigests,
    Tensors,
    check_pickle_weights_only,
    content_digest,
    is_skipped,
    read_safetensors_header,
    sniff_weights,
    weights_slot,
)

ModelKind = Literal["diffusers_folder", "safetensors_file", "lora_file", "file"]
MODEL_KINDS: tuple[str, ...] = ("diffusers_folder", "safetensors_file", "lora_file", "file")

# Domain separation: a manifest digest can never collide with a digest of some other
# canonical JSON document this project hashes.
MANIFEST_SCHEME = "t2i-auditor-model-manifest-v1"

_HEX64 = r"^[0-9a-f]{64}$"
_CHUNK = 1 << 20


class FileEntry(BaseModel):
    """One file of a model: where it lies inside the model root and what it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)  # posix, relative to the model root
    sha256: str = Field(pattern=_HEX64)
    size: int = Field(ge=0)


class ModelIdentity(BaseModel):
    """What a report says a model *is*: kind, manifest digest and the files behind it.

    `name` is a basename only: an absolute path would leak the auditor's file system
    layout into a document that may be shown to a court or the other party.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ModelKind
    digest: str = Field(pattern=_HEX64)
    files: tuple[FileEntry, ...] = Field(min_length=1)
    name: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    content_digest: str | None = Field(
        None, pattern=_HEX64, description="digest of the weights alone (None: no weights file found)"
    )


LOAD_PATH_FIELD = "_name_or_path"


def forget_load_paths(folder: str | os.PathLike[str]) -> None:
    """Drop the folder a saved component was loaded from out of its config.json (`folder`'s own and
    each component folder's). diffusers records it there on load and writes it back on save, so a
    model saved by this project would carry a local path: its bytes, its digest, a keyset's digest
    and the audit seeds drawn from it would then depend on where a cache lay, and a shared reference
    would publish its builder's folder names. Called on every folder the project saves a model to."""
    root = Path(folder)
    for config in (root / "config.json", *sorted(root.glob("*/config.json"))):
        if not config.is_file():
            continue
        values = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(values, dict) and values.pop(LOAD_PATH_FIELD, None) is not None:
            # the libraries' own layout (indent 2, sorted keys), so nothing else in the file moves
            atomic_write_text(config, json.dumps(values, indent=2, sort_keys=True) + "\n")


def manifest_digest(kind: str, files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """sha256 over the canonical JSON of the sorted (path, sha256, size) list and the kind."""
    rows = sorted((entry.path, entry.sha256, entry.size) for entry in files)
    document = {"scheme": MANIFEST_SCHEME, "kind": kind, "files": [list(row) for row in rows]}
    return sha256_bytes(canonical_json(document))


def hash_model(path: str | os.PathLike[str], kind: str | None = None) -> ModelIdentity:
    """Identify the model at `path` (a folder or a single weights file).

    `kind` is detected when None: a folder is a "diffusers_folder", a `.safetensors`
    file is a "lora_file" when its tensor names mention LoRA and a "safetensors_file"
    otherwise, anything else is a "file".
    """
    if kind is not None and kind not in MODEL_KINDS:
        raise BadInputError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    given = Path(path)
    if not given.exists():
        raise BadInputError(f"{given}: model path does not exist (expected a model folder or weights file)")
    # abspath, not resolve: the name is the one the user gave, even through a link.
    name = Path(os.path.abspath(given)).name or given.resolve().name
    if given.is_dir():
        return _hash_folder(given, name, kind)
    if given.is_file():
        return _hash_single_file(given, name, kind)
    raise BadInputError(f"{given}: not a regular file or folder (expected a model folder or weights file)")


def _hash_folder(folder: Path, name: str, kind: str | None) -> ModelIdentity:
    if kind not in (None, "diffusers_folder"):
        raise BadInputError(f"{folder}: is a folder, but model kind {kind!r} names a single file")
    root = folder.resolve()
    read = []
    for relative, target in _walk(root, root, "", frozenset({root})):
        # what a pipeline loads: weights in its component folders (top-level files, such as a
        # single-file checkpoint kept beside the components, are not part of it)
        read.append((*_file_entry(relative, target, weights="/" in relative), target))
    if not read:
        raise BadInputError(f"{folder}: model folder holds no files (expected model weights)")
    read.sort(key=lambda row: row[0].path)
    entries = [entry for entry, _, _ in read]
    return ModelIdentity(
        kind="diffusers_folder",
        digest=manifest_digest("diffusers_folder", entries),
        files=entries,
        name=name,
        content_digest=content_digest(
            [(e.path, file, tensors) for e, tensors, file in read if "/" in e.path]
        ),
    )


def _file_entry(relative: str, file: Path, weights: bool = False) -> tuple[FileEntry, Tensors | None]:
    """Hash and size from one streaming read, so the two cannot describe different contents; for
    a safetensors file in a weights slot (`weights`), each tensor's digest from that same read
    (its content digest rows), so a multi-GB model is read once, not twice."""
    tensors = None
    if weights and weights_slot(relative) is not None and sniff_weights(file) == "safetensors":
        tensors = TensorDigests(file, file.stat().st_size)
    digest, size = hashlib.sha256(), 0
    try:
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                if tensors is not None:
                    tensors.feed(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BadInputError(f"{file}: cannot read model file ({exc.strerror})") from exc
    entry = FileEntry(path=relative, sha256=digest.hexdigest(), size=size)
    return entry, (None if tensors is None else tensors.finish())


def _walk(root: Path, directory: Path, prefix: str, active: frozenset[Path]) -> Iterator[tuple[str, Path]]:
    """Yield (relative posix path, real file path) for every regular file under `directory`.

    A symlink is followed only when its target stays inside the model root: a link out
    of it would make the digest cover files that are not the model's, and a hostile
    model folder could point at the auditor's own secrets. `active` holds the real
    directories being walked, so a link back up the tree is caught, not looped on.
    """
    try:
        children = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise BadInputError(f"{directory}: cannot list model folder ({exc.strerror})") from exc
    for entry in children:
        if is_skipped(entry.name):
            continue
        relative = f"{prefix}{entry.name}"
        link = Path(entry.path)
        if entry.is_symlink():
            try:
                target = link.resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                raise BadInputError(f"{link}: broken or looping symlink in model folder") from exc
            if not target.is_relative_to(root):
                raise BadInputError(
                    f"{link}: symlink points outside the model folder to {target}"
                    " (expected every model file inside the folder)"
                )
        else:
            target = link
        if target.is_dir():
            real = target.resolve()
            if real in active:
                raise BadInputError(f"{link}: symlink loop in model folder")
            yield from _walk(root, real, f"{relative}/", active | {real})
        elif target.is_file():
            yield relative, target
        else:
            raise BadInputError(f"{link}: not a regular file (expected only files and folders in a model)")


def _hash_single_file(file: Path, name: str, kind: str | None) -> ModelIdentity:
    if kind == "diffusers_folder":
        raise BadInputError(f"{file}: model kind 'diffusers_folder' expects a folder, got a file")
    suffix = file.suffix.lower()
    pickled = sniff_weights(file) in ("pickle", "zip")
    if pickled and (suffix == SAFETENSORS_SUFFIX or kind == "lora_file"):
        raise BadInputError(
            f"{file}: named or declared a safetensors file, but its content is a pickle; refused "
            "(unpickling can run arbitrary code)"
        )
    if pickled:
        check_pickle_weights_only(file)
        kind = kind or "file"
    elif suffix == SAFETENSORS_SUFFIX or kind in ("safetensors_file", "lora_file"):
        tensor_names = read_safetensors_header(file).keys()
        if kind is None:
            kind = "lora_file" if any("lora" in key.lower() for key in tensor_names) else "safetensors_file"
        elif kind == "file":
            raise BadInputError(
                f"{file}: a safetensors file is 'safetensors_file' or 'lora_file', not 'file'"
            )
    else:
        if suffix in PICKLE_SUFFIXES:
            check_pickle_weights_only(file)
        kind = kind or "file"
    entry, tensors = _file_entry(file.name, file, weights=True)
    return ModelIdentity(
        kind=kind,
        digest=manifest_digest(kind, [entry]),
        files=(entry,),
        name=name,
        content_digest=content_digest([(file.name, file, tensors)]),
    )
