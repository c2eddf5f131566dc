"""Which diffusers pipeline a model is, read from its files without loading any weights.

A diffusers folder names its pipeline in `model_index.json` (`_class_name`); the torch
backend builds that class, the exporter exports its components, the trainer learns its
conditioning. Supported:

    StableDiffusionPipeline      SD 1.x / 2.x: one CLIP text encoder
    StableDiffusionXLPipeline    SDXL base: two CLIP text encoders, pooled text embeddings and
                                 the size conditioning (add_time_ids); no refiner

Anything else (SD3 and Flux, which are diffusion transformers; the SDXL refiner, an
image-to-image stage; inpainting pipelines) is refused with a one-line error naming the
file, before anything is loaded. The same goes for single-file checkpoints and LoRA files
of one family meant for a base of the other: their tensor names say which family they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from auditor.config import GenerationSettings
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError

SD_PIPELINE = "StableDiffusionPipeline"
SDXL_PIPELINE = "StableDiffusionXLPipeline"
PIPELINES: dict[str, tuple[str, ...]] = {  # the folders each pipeline needs
    SD_PIPELINE: ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    SDXL_PIPELINE: ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
EXPECTED = f"expected {SD_PIPELINE} or {SDXL_PIPELINE}"
NOT_SUPPORTED_NOTE = "DiT models such as SD3 and Flux, and the SDXL refiner, are not supported yet"
INDEX_FILE = "model_index.json"


@dataclass(frozen=True)
class PipelineInfo:
    """A pipeline folder as read from its JSON files: class, where that was read, default size."""

    pipeline: str
    index: Path  # the model_index.json that names it (quoted in errors)
    height: int  # what the pipeline generates when height/width are None
    width: int

    @property
    def is_xl(self) -> bool:
        return self.pipeline == SDXL_PIPELINE

    @property
    def family(self) -> str:
        return "SDXL" if self.is_xl else "SD"


def _json(path: Path, what: str) -> dict:
    data = parse_json(read_bytes(path, what), str(path))
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a JSON object")
    return data


def read_pipeline(folder: str | os.PathLike[str]) -> PipelineInfo:
    """The pipeline of a diffusers folder; BadInputError naming the file when it is not one this tool runs."""
    path = Path(folder)
    if not path.exists():
        raise BadInputError(f"{path}: model not found")
    if not path.is_dir():
        raise BadInputError(f"{path}: expected a diffusers pipeline folder (with {INDEX_FILE}), got a file")
    index = path / INDEX_FILE
    if not index.is_file():
        raise BadInputError(f"{path}: expected a diffusers pipeline folder, {INDEX_FILE} is missing")
    name = _json(index, "model index").get("_class_name")
    if not isinstance(name, str) or name not in PIPELINES:
        raise BadInputError(f"{index}: pipeline {name!r} is not supported; {EXPECTED} ({NOT_SUPPORTED_NOTE})")
    for part in PIPELINES[name]:
        if not (path / part).is_dir():
            raise BadInputError(f"{index}: names a {name}, but '{part}/' is missing from {path}")
    height, width = _default_size(path)
    return PipelineInfo(pipeline=name, index=index, height=height, width=width)


MAX_SIZE = 16384  # pixels a side: beyond any released model, and a bound on what a config may ask for


def _default_size(path: Path) -> tuple[int, int]:
    """unet sample_size x the VAE's downsampling: the size a pipeline generates by default.

    Both configs are files someone may have edited: the size must come out as two positive
    integers no larger than MAX_SIZE, or the folder is refused here, before it reaches a
    keyset or a generator."""
    unet = _json(path / "unet" / "config.json", "UNet config")
    vae = _json(path / "vae" / "config.json", "VAE config")
    size = unet.get("sample_size", 64)
    sides = [size, size] if type(size) is int else size
    channels = vae.get("block_out_channels", (128, 256, 512, 512))
    if (
        not isinstance(sides, list | tuple)
        or len(sides) != 2
        or not all(type(side) is int and 0 < side <= MAX_SIZE for side in sides)
    ):
        raise BadInputError(
            f"{path / 'unet' / 'config.json'}: sample_size must be a positive integer or a pair of them, got {size!r:.60}"
        )
    if not isinstance(channels, list | tuple) or not 1 <= len(channels) <= 8:
        raise BadInputError(
            f"{path / 'vae' / 'config.json'}: block_out_channels must be a list of 1 to 8 entries"
        )
    scale = 2 ** (len(channels) - 1)
    height, width = sides[0] * scale, sides[1] * scale
    if max(height, width) > MAX_SIZE:
        raise BadInputError(f"{path}: default size {height}x{width} exceeds {MAX_SIZE} pixels a side")
    return height, width


def checkpoint_pipeline(tensor_names) -> str | None:
    """The pipeline a single-file (LDM layout) checkpoint is for, from its tensor names; None: unknown."""
    names = list(tensor_names)
    if any(n.startswith("conditioner.embedders.") for n in names):
        return SDXL_PIPELINE
    if any(n.startswith("cond_stage_model.") for n in names):
        return SD_PIPELINE
    return None


def lora_pipeline(tensor_names) -> str | None:
    """SDXL when a LoRA adapts the second text encoder (diffusers' `text_encoder_2.`, kohya's `lora_te2_`);
    None otherwise (a UNet-only LoRA says nothing by its names: the shape check against the base does)."""
    if any(n.startswith(("text_encoder_2.", "lora_te2_")) for n in tensor_names):
        return SDXL_PIPELINE
    return None


def conditioned_settings(settings: GenerationSettings, info: PipelineInfo | None) -> GenerationSettings:
    """`settings` with SDXL's size conditioning spelled out for an SDXL model (unchanged for any other):
    what key selection records, so a keyset of an SDXL source says which conditioning its images had."""
    if info is None or not info.is_xl:
        return settings
    height, width = settings.height or info.height, settings.width or info.width
    original, crop, target = settings.size_conditioning(height, width)
    return settings.model_copy(
        update={"original_size": original, "crops_coords_top_left": crop, "target_size": target}
    )
