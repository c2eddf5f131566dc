"""The one backend factory: a SuspectSpec of any kind becomes a Generator, and a cited identity.

    diffusers_folder  torch or torch-compiled (onnx/tensorrt: refused, export a bundle first)
    safetensors_file  torch or torch-compiled, through diffusers' from_single_file with a local config folder
    lora_file         torch or torch-compiled, the LoRA applied to its base folder
    engine_bundle     onnx or tensorrt (falling back to torch on the source model, recorded)
    http              the black-box HTTP client

`inspect_model` says which pipeline a spec will run (StableDiffusionPipeline or
StableDiffusionXLPipeline) and at which default size, from its files alone, making every
refusal that needs no weights (an unsupported pipeline in model_index.json, a LoRA or
single-file checkpoint of the other family than its base or config folder): the audit
workflow asks it before any generation.

`identify` says which model a report will cite, before anything is generated: the
manifest digest of a folder or file (`auditor.identity`), the *source* model's digest
for an engine bundle (its manifest is re-hashed and binds it to that model, so an audit
via engines and one via torch name the same model), and nothing yet for an HTTP
endpoint, whose digest is its transcript's once the queries are answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from auditor.backends._base import Generator, check_dtype
from auditor.backends._pipelines import PipelineInfo
from auditor.backends._spec import ENGINE_BACKENDS, TORCH_BACKENDS, SuspectSpec, is_url
from auditor.config import FrozenModel
from auditor.errors import BadInputError
from auditor.keys import ModelRef


class Identity(FrozenModel):
    """What a report cites for a model: a display name, its digest and what kind of thing it is."""

    name: str
    digest: str | None
    kind: str  # an identity kind (auditor.identity), "engine_bundle" or "http_endpoint"
    # the weights alone (auditor.identity); None for an endpoint, and for a bundle, whose
    # manifest records only its source's byte digest
    content_digest: str | None = None


def identify(spec: SuspectSpec) -> Identity:
    """The cited identity of `spec` (digest None only for an HTTP endpoint, until it has answered)."""
    from auditor.identity import hash_model

    kind = spec.resolved_kind()
    if kind == "http":
        return Identity(
            name=urlsplit(spec.model).hostname or "http-endpoint", digest=None, kind="http_endpoint"
        )
    if kind == "engine_bundle":
        from auditor.backends.engines.bundle import load_bundle

        source = load_bundle(spec.model).manifest.source
        return Identity(name=source.name, digest=source.digest, kind="engine_bundle")
    identity = hash_model(spec.model, "lora_file" if kind == "lora_file" else None)
    return Identity(
        name=identity.name, digest=identity.digest, kind=identity.kind, content_digest=identity.content_digest
    )


def model_ref(spec: SuspectSpec, name: str | None = None) -> ModelRef:
    """What a keyset or report records of `spec` (source, base, panel or reference model): its name
    (`name`, or the identity's), byte digest and content digest, from `identify`: the one place a
    model becomes a ModelRef."""
    identity = identify(spec)
    return ModelRef(
        name=name or identity.name, digest=identity.digest, content_digest=identity.content_digest
    )


def inspect_model(spec: SuspectSpec) -> PipelineInfo | None:
    """The pipeline `spec` runs, read from its files (None for an HTTP endpoint); BadInputError for
    what this tool cannot run, naming the file."""
    kind = spec.resolved_kind()
    path = Path(spec.model)
    if kind == "http":
        return None
    if kind == "engine_bundle":
        from auditor.backends.engines.bundle import read_manifest

        manifest = read_manifest(path)
        return PipelineInfo(
            pipeline=manifest.pipeline.pipeline_class,
            index=path / "bundle.json",
            height=manifest.shapes.height,
            width=manifest.shapes.width,
        )
    if kind == "lora_file":
        from auditor.backends._lora import check_lora_file

        return check_lora_file(path, spec.base)
    if kind == "safetensors_file":
        from auditor.backends._single_file import check_single_file

        return check_single_file(path, Path(spec.config) if spec.config else None)
    from auditor.backends._pipelines import read_pipeline

    return read_pipeline(path)


def _compiled(generator) -> Generator:
    from auditor.backends._compiled import open_compiled

    return open_compiled(generator)


# What each of TORCH_BACKENDS makes of the TorchGenerator a folder, checkpoint or LoRA opens as.
ON_TORCH: dict[str, Callable[..., Generator]] = {
    "torch": lambda generator: generator,
    "torch-compiled": _compiled,
}


def open_suspect(spec: SuspectSpec, name: str | None = None) -> Generator:
    """Open `spec` as a Generator; `name` labels an HTTP endpoint in its errors."""
    check_dtype(spec.dtype)
    kind = spec.resolved_kind()
    if kind == "http":
        from auditor.backends._http import HttpGenerator

        if not is_url(spec.model):
            raise BadInputError(f"{spec.model}: kind http expects an http:// or https:// URL")
        return HttpGenerator(spec.model, spec.http, name=name)
    path = Path(spec.model)
    if kind == "engine_bundle":
        if spec.backend not in ENGINE_BACKENDS:
            raise BadInputError(
                f"{path}: an engine bundle runs on --backend onnx or tensorrt, not {spec.backend!r}"
            )
        from auditor.backends.engines import open_bundle

        return open_bundle(
            path, spec.backend, device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size
        )
    if spec.backend not in TORCH_BACKENDS:
        raise BadInputError(
            f"{path}: the {spec.backend} backend runs exported bundles, and this is a {kind.replace('_', ' ')};"
            " export it first (t2i-audit export MODEL --out BUNDLE) or use --backend torch or torch-compiled"
        )
    return ON_TORCH[spec.backend](_open_torch(spec, kind, path))


def _open_torch(spec: SuspectSpec, kind: str, path: Path):
    """The TorchGenerator of a diffusers folder, single-file checkpoint or LoRA file."""
    runtime = {"device": spec.device, "dtype": spec.dtype, "batch_size": spec.batch_size}
    if kind == "diffusers_folder":
        from auditor.backends._diffusers import TorchGenerator

        if not path.is_dir():
            raise BadInputError(f"{path}: kind diffusers_folder expects a folder")
        return TorchGenerator(path, **runtime)
    if kind == "lora_file":
        from auditor.backends._lora import load_lora

        return load_lora(path, spec.base, **runtime)
    if kind == "safetensors_file":
        from auditor.backends._single_file import load_single_file

        return load_single_file(path, spec.config, **runtime)
    raise BadInputError(f"{path}: kind {kind!r} is not a model kind this tool opens")
