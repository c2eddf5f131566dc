"""The suspect kinds, one table in the order detection asks them (`_kind.ModelKind` each).

    http              the black-box HTTP client, in the dialect `http.api` names (`_dialects`)
    engine_bundle     onnx or tensorrt (falling back to torch on the source model, recorded)
    diffusers_folder  torch or torch-compiled (onnx/tensorrt: refused, export a bundle first)
    lora_file         torch or torch-compiled, the LoRA applied to its base folder
    safetensors_file  torch or torch-compiled, through diffusers' from_single_file with a local config folder

Every loader is imported inside the method that needs it: detecting a kind, or refusing a
spec before any generation, loads neither torch nor diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from auditor.backends._base import ENGINE_BACKENDS, Generator
from auditor.backends._dialects import dialect_of
from auditor.backends._kind import Identity, ModelKind, Spec
from auditor.backends._pipelines import PipelineInfo
from auditor.config import GenerationSettings
from auditor.errors import BadInputError
from auditor.weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, read_safetensors_header

BUNDLE_MANIFEST = "bundle.json"


def is_url(model: str | os.PathLike[str]) -> bool:
    return str(model).startswith(("http://", "https://"))


def _compiled(generator) -> Generator:
    from auditor.backends._compiled import open_compiled

    return open_compiled(generator)


# What each torch backend makes of the TorchGenerator a folder, checkpoint or LoRA opens as.
ON_TORCH: dict[str, Callable[..., Generator]] = {
    "torch": lambda generator: generator,
    "torch-compiled": _compiled,
}


def _runtime(spec: Spec) -> dict:
    return {"device": spec.device, "dtype": spec.dtype, "batch_size": spec.batch_size}


class _LocalKind:
    """What the kinds of local files share: files hashed for their identity, the scheduler folder
    their settings are checked against, the torch backends (a bundle overrides the last two)."""

    name = ""

    def settings_folder(self, spec: Spec) -> str | None:
        """The folder whose scheduler config `spec` runs."""
        return spec.model

    def identify(self, spec: Spec) -> Identity:
        from auditor.identity import hash_model

        identity = hash_model(spec.model, "lora_file" if self.name == "lora_file" else None)
        return Identity(
            name=identity.name,
            digest=identity.digest,
            kind=identity.kind,
            content_digest=identity.content_digest,
        )

    def check_settings(self, spec: Spec, settings: GenerationSettings) -> None:
        folder = self.settings_folder(spec)
        if folder is None or not (Path(folder) / "scheduler" / "scheduler_config.json").is_file():
            return  # a folder that fails to open with its own message later
        from auditor.backends._diffusers import check_folder_settings

        check_folder_settings(folder, settings, f"{Path(spec.model).name}: generation settings")

    def open(self, spec: Spec, name: str | None = None) -> Generator:
        path = Path(spec.model)
        if spec.backend not in ON_TORCH:
            raise BadInputError(
                f"{path}: the {spec.backend} backend runs exported bundles, and this is a "
                f"{self.name.replace('_', ' ')}; export it first (t2i-audit export MODEL --out BUNDLE) or use "
                "--backend torch or torch-compiled"
            )
        return ON_TORCH[spec.backend](self.load(spec, path))

    def load(self, spec: Spec, path: Path) -> Generator:
        raise NotImplementedError


class DiffusersFolder(_LocalKind):
    name = "diffusers_folder"

    def detect(self, model: str) -> bool:
        return Path(model).is_dir()

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        from auditor.backends._pipelines import read_pipeline

        return read_pipeline(Path(spec.model))

    def load(self, spec: Spec, path: Path) -> Generator:
        from auditor.backends._diffusers import TorchGenerator

        if not path.is_dir():
            raise BadInputError(f"{path}: kind diffusers_folder expects a folder")
        return TorchGenerator(path, **_runtime(spec))


class SafetensorsFile(_LocalKind):
    """A single-file checkpoint (a pickled one too: loading checks the pickle first)."""

    name = "safetensors_file"

    def detect(self, model: str) -> bool:
        path = Path(model)
        return path.is_file() and path.suffix.lower() in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)

    def settings_folder(self, spec: Spec) -> str | None:
        return spec.config

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        from auditor.backends._single_file import check_single_file

        return check_single_file(Path(spec.model), Path(spec.config) if spec.config else None)

    def load(self, spec: Spec, path: Path) -> Generator:
        from auditor.backends._single_file import load_single_file

        return load_single_file(path, spec.config, **_runtime(spec))


class LoraFile(_LocalKind):
    name = "lora_file"

    def detect(self, model: str) -> bool:
        path = Path(model)
        if not path.is_file() or path.suffix.lower() != SAFETENSORS_SUFFIX:
            return False
        return any("lora" in name.lower() for name in read_safetensors_header(path))

    def settings_folder(self, spec: Spec) -> str | None:
        return spec.base

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        from auditor.backends._lora import check_lora_file

        return check_lora_file(Path(spec.model), spec.base)

    def load(self, spec: Spec, path: Path) -> Generator:
        from auditor.backends._lora import load_lora

        return load_lora(path, spec.base, **_runtime(spec))


class EngineBundle(_LocalKind):
    """An exported bundle: cited by its source model's digest, run on onnx or tensorrt."""

    name = "engine_bundle"

    def detect(self, model: str) -> bool:
        path = Path(model)
        return path.is_dir() and (path / BUNDLE_MANIFEST).is_file()

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        from auditor.backends.engines.bundle import read_manifest

        path = Path(spec.model)
        manifest = read_manifest(path)
        return PipelineInfo(
            pipeline=manifest.pipeline.pipeline_class,
            index=path / BUNDLE_MANIFEST,
            height=manifest.shapes.height,
            width=manifest.shapes.width,
        )

    def identify(self, spec: Spec) -> Identity:
        from auditor.backends.engines.bundle import load_bundle

        source = load_bundle(spec.model).manifest.source
        return Identity(name=source.name, digest=source.digest, kind="engine_bundle")

    def open(self, spec: Spec, name: str | None = None) -> Generator:
        path = Path(spec.model)
        if spec.backend not in ENGINE_BACKENDS:
            raise BadInputError(
                f"{path}: an engine bundle runs on --backend onnx or tensorrt, not {spec.backend!r}"
            )
        from auditor.backends.engines import open_bundle

        return open_bundle(path, spec.backend, **_runtime(spec))


class HttpEndpoint:
    """A black-box endpoint: cited by its transcript's digest once it answered (None before)."""

    name = "http"

    def detect(self, model: str) -> bool:
        return is_url(model)

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        return None

    def identify(self, spec: Spec) -> Identity:
        return Identity(
            name=urlsplit(spec.model).hostname or "http-endpoint", digest=None, kind="http_endpoint"
        )

    def check_settings(self, spec: Spec, settings: GenerationSettings) -> None:
        """What no request of the dialect can carry is refused now, not after the references ran;
        the scheduler is the server's business."""
        dialect = dialect_of(spec.http)
        dialect.check_settings(settings, dialect.prepare(spec.http), f"{spec.model}: generation settings")

    def open(self, spec: Spec, name: str | None = None) -> Generator:
        from auditor.backends._http import HttpGenerator

        if not is_url(spec.model):
            raise BadInputError(f"{spec.model}: kind http expects an http:// or https:// URL")
        return HttpGenerator(spec.model, spec.http, name=name)


KIND_TABLE: tuple[ModelKind, ...] = (
    HttpEndpoint(),
    EngineBundle(),
    DiffusersFolder(),
    LoraFile(),
    SafetensorsFile(),
)
KINDS_BY_NAME: dict[str, ModelKind] = {kind.name: kind for kind in KIND_TABLE}


def detect_kind(model: str | os.PathLike[str]) -> str:
    """What `model` is: the first kind of the table that recognises it."""
    for kind in KIND_TABLE:
        if kind.detect(str(model)):
            return kind.name
    path = Path(model)
    if not path.is_file():
        raise BadInputError(f"{path}: model not found (expected a model folder, a weights file or a URL)")
    raise BadInputError(
        f"{path}: unknown model file type {path.suffix!r} (expected .safetensors, .ckpt, a folder or a URL)"
    )
