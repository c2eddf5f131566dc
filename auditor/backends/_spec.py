"""SuspectSpec: a model to open, of any kind, with one of the backends; the kinds and backends listed once.

Everything that opens a model (an audit's suspect and references, a batch job entry,
`t2i-audit serve`, key selection) describes it as a SuspectSpec, and `open_suspect`
turns it into a Generator. Adding a kind or a backend means adding it to the literals
here and a branch in `auditor.backends._factory` (a backend over the torch pipeline: its name
in `TORCH_BACKENDS` and its entry in the factory's `ON_TORCH`); the CLI, job files and serve
read their choices from these lists.

Backends: `torch` (diffusers, eager: the reference), `torch-compiled` (the same pipeline, its
UNet compiled for static shapes: `_compiled`), both for diffusers folders, single-file
checkpoints and LoRA files; `onnx` and `tensorrt` for exported engine bundles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field

from auditor.backends._base import DType
from auditor.backends._http import HttpOptions
from auditor.config import FrozenModel
from auditor.errors import BadInputError
from auditor.weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, read_safetensors_header

SuspectKind = Literal["diffusers_folder", "safetensors_file", "lora_file", "engine_bundle", "http"]
KINDS: tuple[str, ...] = get_args(SuspectKind)
BackendName = Literal["torch", "torch-compiled", "onnx", "tensorrt"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
ENGINE_BACKENDS: tuple[str, ...] = ("onnx", "tensorrt")  # run an exported engine bundle
TORCH_BACKENDS: tuple[str, ...] = ("torch", "torch-compiled")  # run a diffusers pipeline in torch
BUNDLE_MANIFEST = "bundle.json"


class SuspectSpec(FrozenModel):
    """A model and how to run it. Paths are used as given (callers resolve relative ones)."""

    model: str = Field(min_length=1, description="diffusers folder, checkpoint or LoRA file, bundle, or URL")
    kind: Literal["auto"] | SuspectKind = "auto"
    config: str | None = Field(
        None, description="single-file checkpoint: a local diffusers folder of the same architecture"
    )
    base: str | None = Field(None, description="LoRA file: the diffusers folder of its base model")
    backend: BackendName = "torch"
    http: HttpOptions | None = None
    device: str = "auto"
    dtype: DType = "float32"
    batch_size: int = Field(16, ge=1, le=1024)

    def resolved_kind(self) -> str:
        return detect_kind(self.model) if self.kind == "auto" else self.kind


def is_url(model: str | os.PathLike[str]) -> bool:
    return str(model).startswith(("http://", "https://"))


def detect_kind(model: str | os.PathLike[str]) -> str:
    """What `model` is: http, engine_bundle, diffusers_folder, lora_file or safetensors_file."""
    if is_url(model):
        return "http"
    path = Path(model)
    if path.is_dir():
        return "engine_bundle" if (path / BUNDLE_MANIFEST).is_file() else "diffusers_folder"
    if not path.is_file():
        raise BadInputError(f"{path}: model not found (expected a model folder, a weights file or a URL)")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        names = read_safetensors_header(path).keys()
        return "lora_file" if any("lora" in name.lower() for name in names) else "safetensors_file"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "safetensors_file"  # a single checkpoint all the same; loading checks the pickle first
    raise BadInputError(
        f"{path}: unknown model file type {path.suffix!r} (expected .safetensors, .ckpt, a folder or a URL)"
    )
