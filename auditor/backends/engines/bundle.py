"""The bundle manifest (`bundle.json`) and the checks made when a bundle is opened.

A bundle is self-contained: the ONNX graphs, the tokenizer and scheduler config copied
from the source pipeline, seeded validation inputs with torch's outputs, and this
manifest, which names every file with its sha256. Opening a bundle re-hashes all of
them, so a swapped graph cannot regenerate keys under the source model's name, and
the manifest records the source model's digest (`auditor.identity.hash_model`), so a
bundle is never used in place of a different model.

Layout (paths relative to the bundle root):

    bundle.json
    text_encoder/model.onnx   unet/model.onnx   vae_decoder/model.onnx   (portable fp32 graphs)
    text_encoder_2/model.onnx                                            (SDXL bundles)
    */model.fp16.onnx         fp16 graphs (--precision fp16), float32 at their inputs and outputs
    unet/model.fp16.cuda.onnx the fp16 UNet fused by ONNX Runtime's transformer optimizer for its
                              CUDA provider (`ComponentRecord.ort_fusions`)
    */model.ort.onnx          ONNX Runtime CPU graphs, optimized offline
    */model.onnx.data         external weights, only for components over the 2 GB limit
    */validation.npz          seeded inputs and torch's outputs
    tokenizer/  scheduler/  model_index.json     copied from the source pipeline (tokenizer_2/: SDXL)
    .engines/                 TensorRT engine cache (host-specific; not hashed here, and hidden so
                              that hash_model(bundle) does not change when engines are built)
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from auditor.backends.engines.components import (
    ComponentContract,
    ComponentName,
    ExportShapes,
    ParityRecord,
    Precision,
)
from auditor.backends.engines.components_xl import pipeline_specs
from auditor.config import FrozenModel
from auditor.documents import load_document
from auditor.errors import BadInputError, VerificationError
from auditor.fileio import atomic_write_bytes, atomic_write_text, sha256_file

BUNDLE_SCHEMA = "t2i-auditor.engine-bundle/v1"
# manifests written before the version field had its one name
_LEGACY = {"format": "t2i-auditor-engine-bundle-v1"}
MANIFEST_NAME = "bundle.json"
_HEX64 = r"^[0-9a-f]{64}$"


class BundleIntegrityError(VerificationError):
    """A bundle file is missing or its sha256 differs from the manifest (tampered or corrupt)."""


class BackendUnavailable(Exception):
    """Internal: an engine backend cannot run this bundle here; the loader may fall back to torch.

    Not an `AuditorError`: it never reaches the CLI. `open_bundle` turns it into a
    fallback with `BackendInfo.note` set, or into a `BadInputError` when no source model
    is at hand.
    """


def _inside(path: str) -> str:
    """Relative, posix, no "..": a manifest cannot point outside its bundle."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"expected a relative path inside the bundle, got {path!r}")
    return path


InsidePath = Annotated[str, AfterValidator(_inside)]


class FileRecord(FrozenModel):
    path: InsidePath
    sha256: str = Field(pattern=_HEX64)
    size: int = Field(ge=0)


class LoopParityRecord(FrozenModel):
    """The fp16 graphs run through the denoising loop on real prompts, compared with the fp32 graphs' images."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    runtime: str
    finite: bool  # every component output of every step was finite
    psnr_db: float | None  # of the fp16 images against the fp32 images (None: not finite; inf: identical)
    max_pixel_diff: int | None
    min_psnr_db: float
    passed: bool
    detail: str = ""

    def summary(self) -> str:
        if not self.finite:
            return f"denoising loop ({self.runtime}): {self.detail or 'non-finite output'}"
        return (
            f"denoising loop ({self.runtime}, {len(self.prompts)} prompts x {self.steps} steps):"
            f" PSNR {self.psnr_db:.1f} dB against fp32 (minimum {self.min_psnr_db:.0f}),"
            f" max pixel difference {self.max_pixel_diff}/255"
        )


class HalfGraphRecord(FrozenModel):
    """The component's fp16 graph: the precision lives in the graph (TensorRT 11 has no FP16 flag)."""

    onnx: InsidePath
    external_data: bool
    # "sdpa-fp16": scaled-dot-product attention in the pattern fused kernels match (Q and K scaled by
    # d^-1/4 before QK^T, no zero add, softmax, second MatMul); "sdpa-fp32": that pattern on fp32 Q, K
    # and V, for UNets configured with upcast_attention (SD 2.x); "fp32-softmax": scores cast to fp32
    # for the softmax (text encoders; every attention of bundles exported before the SDPA rule);
    # "fp32-upcast": older bundles' classic attention with QK^T in fp32; "fp16": older still
    attention: Literal["sdpa-fp16", "sdpa-fp32", "fp32-softmax", "fp32-upcast", "fp16"]
    # "fp32": GroupNorm and LayerNorm computed in fp32 behind casts; "fp16": older bundles
    normalization: Literal["fp16", "fp32"] = "fp16"
    parity: ParityRecord
    # "fp32": the fp16 graph set runs this component's fp32 graph (`onnx` is it): SDXL's VAE decoder,
    # which overflows in fp16
    precision: Literal["fp16", "fp32"] = "fp16"


class OrtFusionRecord(FrozenModel):
    """ONNX Runtime's transformer optimizer (model_type "unet") applied offline to one graph at export.

    target "cpu": the fp32 graph with the CPU provider's fusions, the source of `ort_cpu` when it
    validated (`ort_optimization` "transformers+extended"); target "cuda": the fp16 graph with every
    fusion, some CUDA-only, for the onnx backend's CUDA provider (validated at load where the export
    could not run it)."""

    target: Literal["cpu", "cuda"]
    source: InsidePath  # the graph it was applied to
    onnx: InsidePath | None = None  # the fused graph kept (None: not applied or not kept; `reason` says why)
    fused: dict[str, int] = Field(default_factory=dict)  # fused operator -> count
    parity: ParityRecord | None = None  # None: not validated at export (`reason` says why)
    reason: str | None = None
    seconds: float = 0.0


class ComponentRecord(FrozenModel):
    contract: ComponentContract
    onnx: InsidePath = Field(description="portable graph: GPU providers and TensorRT build from it")
    ort_cpu: InsidePath = Field(description="graph ONNX Runtime's CPU provider loads")
    ort_optimization: str = Field(
        description="offline ONNX Runtime level kept for ort_cpu: extended, basic or none"
    )
    external_data: bool
    files: tuple[FileRecord, ...] = Field(min_length=1)
    validation: FileRecord
    parity: ParityRecord
    export_seconds: float
    fp16: HalfGraphRecord | None = None
    ort_fusions: tuple[OrtFusionRecord, ...] = ()

    def ort_fusion(self, target: str) -> OrtFusionRecord | None:
        return next((f for f in self.ort_fusions if f.target == target), None)


class SourceRecord(FrozenModel):
    """The model the bundle was exported from."""

    name: str
    digest: str = Field(pattern=_HEX64)
    # from the bundle root to the source folder; the torch fallback looks there
    relative_path: str | None = None


class PipelineRecord(FrozenModel):
    """What the denoising loop needs beyond the graphs."""

    scaling_factor: float
    tokenizer_class: str
    scheduler_class: str
    pipeline_class: Literal["StableDiffusionPipeline", "StableDiffusionXLPipeline"] = (
        "StableDiffusionPipeline"
    )
    tokenizer_2_class: str | None = None  # SDXL: the second text encoder's tokenizer
    upcast_attention: bool = False  # SD 2.x: the fp16 UNet graph keeps QK^T and softmax in fp32
    # recorded; StableDiffusionPipeline runs its VAE in the pipeline's dtype whatever this says, and
    # SDXL bundles keep the VAE decoder fp32 in their fp16 graph set whatever it says
    vae_force_upcast: bool = False


class EngineRecord(FrozenModel):
    """A TensorRT engine built at export; valid only for this TensorRT version and GPU."""

    component: ComponentName
    cache_key: str = Field(pattern=_HEX64)
    path: InsidePath
    sha256: str = Field(pattern=_HEX64)
    precision: Precision
    tensorrt: str
    gpu: str
    compute_capability: str
    parity: ParityRecord


class BundleManifest(FrozenModel):
    schema_version: Literal["t2i-auditor.engine-bundle/v1"] = BUNDLE_SCHEMA
    created_by: str
    source: SourceRecord
    precision: Precision
    opset: int
    shapes: ExportShapes
    pipeline: PipelineRecord
    components: dict[ComponentName, ComponentRecord]
    assets: tuple[FileRecord, ...]
    tools: dict[str, str]
    parity_passed: bool
    engines: tuple[EngineRecord, ...] = ()
    # --precision fp16: the fp16 graphs through the denoising loop on prompts, against the fp32 graphs
    fp16_loop_parity: LoopParityRecord | None = None

    @model_validator(mode="after")
    def _components_of_the_pipeline(self) -> BundleManifest:
        # an edited manifest that names one pipeline and lists another's graphs would fail in the
        # denoising loop, after the references were generated; refused when the manifest is read
        expected = set(pipeline_specs(self.pipeline.pipeline_class))
        if set(self.components) != expected:
            raise ValueError(
                f"a {self.pipeline.pipeline_class} bundle has the components {sorted(expected)},"
                f" this one lists {sorted(self.components)}"
            )
        return self

    def hashed_files(self) -> list[FileRecord]:
        out = list(self.assets)
        for record in self.components.values():
            out.extend(record.files)
            out.append(record.validation)
        return out

    def failed_parity(self) -> list[str]:
        failed = []
        for name, record in self.components.items():
            failed.extend(
                f"{name} ({parity.summary()})"
                for parity in (record.parity, record.fp16.parity if record.fp16 else None)
                if parity is not None and not parity.passed
            )
        if self.fp16_loop_parity is not None and not self.fp16_loop_parity.passed:
            failed.append(f"fp16 graphs ({self.fp16_loop_parity.summary()})")
        return failed

    def graph_for(self, component: str, precision: str) -> str:
        """The graph an engine of `precision` is built from, or BackendUnavailable when the bundle has none."""
        record = self.components[component]  # type: ignore[index]
        if precision == "fp32":
            return record.onnx
        if record.fp16 is None:
            raise BackendUnavailable(
                f"the bundle has no fp16 graphs (exported with --precision {self.precision});"
                " re-export it with --precision fp16, or run float32"
            )
        return record.fp16.onnx

    def sha256_of(self, component: str, relative: str) -> str:
        return next(f.sha256 for f in self.components[component].files if f.path == relative)  # type: ignore[index]


def file_record(root: Path, relative: str) -> FileRecord:
    path = root / relative
    return FileRecord(path=relative, sha256=sha256_file(path), size=path.stat().st_size)


class Bundle:
    """An opened, verified bundle: its root folder and manifest."""

    def __init__(self, root: Path, manifest: BundleManifest) -> None:
        self.root = root
        self.manifest = manifest

    def path(self, relative: str) -> Path:
        return self.root / relative

    def source_candidate(self) -> Path | None:
        rel = self.manifest.source.relative_path
        if rel is None:
            return None
        return Path(os.path.normpath(self.root / rel))


def save_manifest(root: Path, manifest: BundleManifest) -> Path:
    return atomic_write_text(root / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n", mode=0o644)


def read_manifest(root: str | os.PathLike[str]) -> BundleManifest:
    root = Path(root)
    if not root.exists():
        raise BadInputError(f"{root}: bundle not found")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(
            f"{root}: not an engine bundle ({MANIFEST_NAME} is missing); create one with"
            " `t2i-audit export MODEL --out BUNDLE`"
        )
    return load_document(path, BundleManifest, what="bundle manifest", version=BUNDLE_SCHEMA, legacy=_LEGACY)


def verify_files(root: Path, manifest: BundleManifest) -> None:
    """Re-hash every file the manifest names; any difference refuses the bundle."""
    for record in manifest.hashed_files():
        path = root / record.path
        if not path.is_file():
            raise BundleIntegrityError(f"{root}: bundle file {record.path} is missing; re-export the bundle")
        if path.stat().st_size != record.size or sha256_file(path) != record.sha256:
            raise BundleIntegrityError(
                f"{root}: bundle file {record.path} does not match its sha256 in {MANIFEST_NAME}"
                " (tampered or corrupt); re-export the bundle"
            )


def check_source(manifest: BundleManifest, model: str | os.PathLike[str]) -> Path:
    """Refuse `model` unless it is the model the bundle was exported from."""
    from auditor.identity import hash_model

    identity = hash_model(model)
    if identity.digest != manifest.source.digest:
        raise BadInputError(
            f"{model}: model digest {identity.digest[:16]}... differs from the bundle's source"
            f" {manifest.source.name} ({manifest.source.digest[:16]}...); the bundle was exported from another model"
        )
    return Path(model)


def load_bundle(root: str | os.PathLike[str], *, model: str | os.PathLike[str] | None = None) -> Bundle:
    """Open a bundle: parse the manifest, re-hash its files and, given `model`, check the source digest."""
    root = Path(root)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    if model is not None:
        check_source(manifest, model)
    return Bundle(root, manifest)


# ---------------------------------------------------------------- validation data


def save_validation(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Seeded inputs and torch's outputs, the reference every runtime is held to (npz, no pickle)."""
    buffer = io.BytesIO()
    arrays = {f"input.{k}": v for k, v in inputs.items()} | {f"output.{k}": v for k, v in outputs.items()}
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), mode=0o644)


def load_validation(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
        outputs = {k.removeprefix("output."): data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs
