"""Innocent references for the owner's own model: fine-tunes of the public base on the owner's real images.

    t2i-audit references build --base BASE --data IMAGEFOLDER --count N --out DIR [--lora-rank R]

The verdict compares a suspect with innocent models of its own kind, so the references
must be fine-tunes of the same public base, on data of the same kind, never the base
itself or the source (docs/method.md). Each reference i fine-tunes the base with the one
trainer (`auditor.finetune`) on its own seeded draw of the data, seed `seed + i`.

The data is a Hugging Face imagefolder: images plus `metadata.jsonl` with one
`{"file_name": ..., "text": ...}` per line. Each reference is content-addressed (its
folder is named by the hash of the base's digest, the data's digest and its recipe),
built under a temporary name and renamed when complete, so an interrupted build resumes
and a finished reference is never trained twice. `DIR/references.json` lists them with
everything that made them (seeds, steps, learning rate, data and base digests), and
`t2i-audit audit --reference-set DIR` audits against all of them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from auditor.config import FrozenModel
from auditor.documents import load_document, parse_json, read_bytes
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.finetune import LORA_FILE, Recipe, finetune
from auditor.progress import Reporter

if TYPE_CHECKING:
    from auditor.backends import SuspectSpec

REFERENCE_SET_SCHEMA = "t2i-auditor.reference-set/v1"
INDEX_FILE = "references.json"
METADATA_FILE = "metadata.jsonl"
MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ReferenceModel(FrozenModel):
    name: str
    path: str = Field(description="relative to the reference-set file")
    kind: Literal["diffusers_folder", "lora_file"]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="the model's identity digest")
    recipe: Recipe
    seconds: float


class ReferenceSet(FrozenModel):
    schema_version: Literal["t2i-auditor.reference-set/v1"] = REFERENCE_SET_SCHEMA
    base: str = Field(description="the base's name")
    base_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    base_path: str = Field(description="the base folder, relative to the reference-set file where it can be")
    data_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 over the imagefolder's pairs")
    data_pairs: int
    models: tuple[ReferenceModel, ...]


# ---------------------------------------------------------------- data


def load_imagefolder(folder: str | os.PathLike[str], resolution: int) -> tuple[np.ndarray, list[str], str]:
    """(uint8 images resized to resolution x resolution, captions, data digest) of an imagefolder.

    Images are center-cropped to a square and resized (Lanczos); the digest covers every
    (file name, file sha256, caption), so it names the data, not where it lies.
    """
    from PIL import Image

    root = Path(folder)
    meta = root / METADATA_FILE
    if not root.is_dir():
        raise BadInputError(f"{root}: expected an imagefolder (images plus {METADATA_FILE}), found no folder")
    text = read_bytes(meta, f"{METADATA_FILE} (one JSON object per line: file_name, text)", 64 << 20)
    rows, images, captions = [], [], []
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{meta}: expected UTF-8 text, one JSON object per line") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{meta}:{number}"
        record = parse_json(line, where)
        name, caption = (
            (record.get("file_name"), record.get("text")) if isinstance(record, dict) else (None, None)
        )
        if not isinstance(name, str) or not isinstance(caption, str) or not caption.strip():
            raise BadInputError(f'{where}: expected {{"file_name": ..., "text": ...}} with a non-empty text')
        path = (root / name).resolve()
        if not path.is_relative_to(root.resolve()) or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise BadInputError(f"{where}: file_name {name!r} must name an image inside {root}")
        data = read_bytes(path, "image", 256 << 20)
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise BadInputError(f"{path}: {img.width}x{img.height} pixels, more than accepted")
                from PIL import ImageOps

                images.append(_square(ImageOps.exif_transpose(img).convert("RGB"), resolution))
        except BadInputError:
            raise
        except Exception as exc:  # PIL raises many types on corrupt files
            raise BadInputError(f"{path}: not a readable image ({type(exc).__name__})") from None
        captions.append(caption.strip())
        rows.append([name, sha256_bytes(data), caption.strip()])
    if not rows:
        raise BadInputError(f"{meta}: lists no images")
    digest = sha256_bytes(canonical_json({"scheme": "t2i-auditor-imagefolder-v1", "pairs": sorted(rows)}))
    return np.stack(images), captions, digest


def _square(img, resolution: int) -> np.ndarray:
    from PIL import Image

    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------- building


def reference_key(base_digest: str, data_digest: str, recipe: Recipe) -> str:
    document = {
        "scheme": "t2i-auditor-reference-v1",
        "base": base_digest,
        "data": data_digest,
        # a field left None since it was added does not change the keys of sets built before it
        "recipe": {k: v for k, v in recipe.model_dump(mode="json").items() if k != "lora_targets" or v},
    }
    return sha256_bytes(canonical_json(document))


def build_references(
    base: str | os.PathLike[str],
    data: str | os.PathLike[str],
    count: int,
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> ReferenceSet:
    """Fine-tune `count` references (seeds recipe.seed + i) and write OUT/references.json."""
    from auditor.backends import read_pipeline
    from auditor.identity import hash_model

    reporter = reporter or Reporter()
    if count < 1:
        raise BadInputError(f"--count {count}: expected at least 1")
    base_dir, out_dir = Path(base), Path(out)
    read_pipeline(base_dir)
    base_identity = hash_model(base_dir)
    images, captions, data_digest = load_imagefolder(data, _resolution(base_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    models = []
    for stale in out_dir.glob(".reference-*.tmp-*"):  # left by a killed build
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    with reporter.task("references", count) as advance:
        for i in range(count):
            member = Recipe.model_validate({**recipe.model_dump(), "seed": recipe.seed + i})
            key = reference_key(base_identity.digest, data_digest, member)
            name = f"reference-{key[:16]}"  # named by what made it: a seed built before is found again
            final = out_dir / name
            start = time.perf_counter()
            if not final.is_dir():
                staging = out_dir / f".{name}.tmp-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    finetune(
                        base_dir,
                        images,
                        captions,
                        member,
                        staging,
                        device=device,
                        reporter=reporter,
                        label=name,
                    )
                    try:
                        os.replace(staging, final)
                    except OSError:
                        if not final.is_dir():
                            raise
                        shutil.rmtree(staging, ignore_errors=True)  # a concurrent build finished first
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            else:
                reporter.log(f"references: {name} already built")
            model = final / LORA_FILE if member.lora_rank is not None else final
            kind = "lora_file" if member.lora_rank is not None else "diffusers_folder"
            models.append(
                ReferenceModel(
                    name=name,
                    path=str(model.relative_to(out_dir)),
                    kind=kind,
                    digest=hash_model(model, kind).digest,
                    recipe=member,
                    seconds=round(time.perf_counter() - start, 2),
                )
            )
            advance(i + 1)
    reference_set = ReferenceSet(
        base=base_identity.name,
        base_digest=base_identity.digest,
        base_path=os.path.relpath(base_dir.resolve(), out_dir.resolve()),
        data_digest=data_digest,
        data_pairs=len(captions),
        models=tuple(models),
    )
    atomic_write_text(
        out_dir / INDEX_FILE, json.dumps(reference_set.model_dump(mode="json"), indent=2) + "\n"
    )
    return reference_set


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _resolution(base: Path) -> int:
    """The base's default resolution: UNet sample size times the VAE's downsampling."""
    unet = parse_json(
        read_bytes(base / "unet" / "config.json", "UNet config"), str(base / "unet" / "config.json")
    )
    vae = parse_json(
        read_bytes(base / "vae" / "config.json", "VAE config"), str(base / "vae" / "config.json")
    )
    try:
        size = unet["sample_size"]
        size = size if isinstance(size, int) else size[0]
        return int(size) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (KeyError, TypeError, IndexError):
        raise BadInputError(f"{base}: UNet or VAE config lacks sample_size / block_out_channels") from None


def load_reference_set(directory: str | os.PathLike[str]) -> tuple[ReferenceSet, Path]:
    """A reference set (DIR or DIR/references.json) and the folder its paths are relative to."""
    path = Path(directory)
    path = path / INDEX_FILE if path.is_dir() else path
    reference_set = load_document(path, ReferenceSet, what="reference-set file", version=REFERENCE_SET_SCHEMA)
    return reference_set, path.parent


def reference_set_specs(
    directory: str | os.PathLike[str], keyset_base_digest: str | None, **runtime
) -> list[SuspectSpec]:
    """The set's models as SuspectSpecs (a LoRA on the set's own base), after checking the set
    was trained from the base the keys were selected against."""
    from auditor.backends import SuspectSpec

    reference_set, root = load_reference_set(directory)
    where = f"{root / INDEX_FILE}"
    if keyset_base_digest is not None and reference_set.base_digest != keyset_base_digest:
        raise BadInputError(
            f"{where}: these references were fine-tuned from base {reference_set.base}"
            f" ({reference_set.base_digest[:16]}...), not from the base the keys were selected against"
            f" ({keyset_base_digest[:16]}...); build references from that base"
        )
    base = root / reference_set.base_path
    specs = []
    for model in reference_set.models:
        extra = {"base": str(base), "kind": "lora_file"} if model.kind == "lora_file" else {}
        specs.append(SuspectSpec(model=str(root / model.path), **runtime, **extra))
    return specs


def all_reference_specs(
    explicit: Sequence[SuspectSpec],
    reference_set: str | os.PathLike[str] | None,
    keyset_base_digest: str | None,
    **runtime,
) -> tuple[SuspectSpec, ...]:
    """The one door to an audit's references, for the CLI (`--reference`, `--reference-set`) and a
    batch job (`references`, `reference_set`) alike: the explicit models, then every model of the
    reference set (checked against the keys' base, each with `runtime`)."""
    specs = list(explicit)
    if reference_set is not None:
        specs += reference_set_specs(reference_set, keyset_base_digest, **runtime)
    return tuple(specs)
