"""SuspectSpec: a model to open, of any kind, with one of the backends; the kinds and backends listed once.

Everything that opens a model (an audit's suspect and references, a batch job entry,
`t2i-audit serve`, key selection) describes it as a SuspectSpec, and `open_suspect`
turns it into a Generator. The kinds are objects in `_kinds.KIND_TABLE` (detection asks them in
order); their names are the `SuspectKind` literal here, which job files and the CLI validate
against (`tests/test_suspect_kinds.py` holds the two equal). The backends are listed in
`_base` (`BACKENDS`; a backend over the torch pipeline: its name in `TORCH_BACKENDS` and its
entry in `_kinds.ON_TORCH`).

Backends: `torch` (diffusers, eager: the reference), `torch-compiled` (the same pipeline, its
UNet compiled for static shapes: `_compiled`), both for diffusers folders, single-file
checkpoints and LoRA files; `onnx` and `tensorrt` for exported engine bundles.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from auditor.backends._base import BACKENDS, ENGINE_BACKENDS, TORCH_BACKENDS, BackendName, DType
from auditor.backends._http_options import HttpOptions
from auditor.backends._kind import ModelKind
from auditor.backends._kinds import BUNDLE_MANIFEST, KINDS_BY_NAME, detect_kind, is_url
from auditor.config import FrozenModel

SuspectKind = Literal["diffusers_folder", "safetensors_file", "lora_file", "engine_bundle", "http"]
KINDS: tuple[str, ...] = get_args(SuspectKind)
__all__ = [  # the backends' names are listed in _base; here for the modules that read them here
    "BACKENDS",
    "BUNDLE_MANIFEST",
    "ENGINE_BACKENDS",
    "KINDS",
    "TORCH_BACKENDS",
    "BackendName",
    "SuspectKind",
    "SuspectSpec",
    "detect_kind",
    "is_url",
]


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

    def kind_object(self) -> ModelKind:
        """The row of the kind table this spec is (its kind, or the detected one)."""
        return KINDS_BY_NAME[self.resolved_kind()]
