"""Generators over an engine bundle: ONNX Runtime and TensorRT, with a torch fallback.

    open_bundle(bundle, backend="onnx" | "tensorrt", device="auto", dtype=..., batch_size=...)

Both backends run the single denoising loop of `engines.loop` and differ only in the
component runners they hand it. Opening a bundle re-hashes every file and, when a
`model=` is given, checks it is the bundle's source (`engines.bundle.load_bundle`);
those failures are refusals, never fallbacks.

Fallback: when the bundle failed its parity check at export, or the backend cannot run
here (no onnxruntime / provider, no TensorRT or CUDA, an engine off its tolerance),
the loader returns a TorchGenerator on the source model instead: the `model=` given,
or the manifest's relative path to it when that folder still has the recorded digest.
`describe().note` then says what was asked for and why it did not run. With no source
model at hand the loader raises BadInputError.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.backends._base import ENGINE_BACKENDS, BackendInfo
from auditor.backends._diffusers import TorchGenerator
from auditor.backends.engines.bundle import BackendUnavailable, Bundle, check_source, load_bundle
from auditor.backends.engines.loop import engine_precision
from auditor.config import GenerationSettings
from auditor.errors import BadInputError


class FallbackGenerator:
    """TorchGenerator on the source model, standing in for an engine backend that cannot run."""

    def __init__(self, inner: TorchGenerator, note: str) -> None:
        self.inner = inner
        self.note = note

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        return self.inner.generate(prompts, seeds, settings)

    def describe(self) -> BackendInfo:
        return self.inner.describe().model_copy(update={"note": self.note})


def _fallback_source(bundle: Bundle, model: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The verified source model folder for a torch fallback, or None and why not."""
    if model is not None:
        return Path(model), ""  # already checked against the manifest by load_bundle
    candidate = bundle.source_candidate()
    if candidate is None or not (candidate / "model_index.json").is_file():
        return (
            None,
            f"the source model is not at {bundle.manifest.source.relative_path!r} relative to the bundle",
        )
    try:
        check_source(bundle.manifest, candidate)
    except BadInputError as exc:
        return None, str(exc)
    return candidate, ""


def open_bundle(
    bundle: str | os.PathLike[str],
    backend: str = "onnx",
    *,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 16,
    model: str | os.PathLike[str] | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    validate: str = "auto",
    engine_cache: str | os.PathLike[str] | None = None,
):
    """Open `bundle` with an engine backend, or fall back to torch on its source model (see module doc).

    `model` is the source model: checked against the manifest's digest, and the torch
    fallback's model.
    """
    if backend not in ENGINE_BACKENDS:
        raise BadInputError(f"backend {backend!r}: expected one of {list(ENGINE_BACKENDS)}")
    precision = engine_precision(dtype)
    opened = load_bundle(bundle, model=model)
    try:
        if not opened.manifest.parity_passed:
            failed = opened.manifest.failed_parity() or ["TensorRT engines"]
            raise BackendUnavailable(f"the bundle failed its parity check at export: {'; '.join(failed)}")
        if backend == "onnx":
            from auditor.backends.engines.ort import OnnxGenerator

            return OnnxGenerator(
                opened,
                device=device,
                providers=providers,
                batch_size=batch_size,
                threads=threads,
                validate=validate,
                precision=precision,
            )
        from auditor.backends.engines.tensorrt_backend import TensorRTGenerator

        return TensorRTGenerator(
            opened, device=device, dtype=dtype, batch_size=batch_size, engine_cache=engine_cache
        )
    except BackendUnavailable as exc:
        reason = str(exc)
    source, why_not = _fallback_source(opened, model)
    if source is None:
        raise BadInputError(
            f"{bundle}: the {backend} backend cannot run this bundle ({reason}), and there is no torch fallback"
            f" ({why_not}); pass the source model with model=/--model"
        )
    inner = TorchGenerator(source, device=device, dtype=dtype, batch_size=batch_size)
    return FallbackGenerator(
        inner, f"{backend} backend not used: {reason}; fell back to torch on {source.name}"
    )
