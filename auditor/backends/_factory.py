"""The one backend factory: a SuspectSpec of any kind becomes a Generator, and a cited identity.

Each function asks the spec's row of the kind table (`_kinds.KIND_TABLE`, see there for what
each kind runs on); none switches on a kind's name, so a new kind is one object in the table.

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

`check_settings` refuses, before anything is loaded or generated, settings the spec cannot
run (its scheduler folder's dry run) or carry (what its HTTP dialect's requests cannot hold).
"""

from __future__ import annotations

from auditor.backends._base import Generator, check_dtype
from auditor.backends._kind import Identity
from auditor.backends._kinds import ON_TORCH
from auditor.backends._pipelines import PipelineInfo
from auditor.backends._spec import SuspectSpec
from auditor.config import GenerationSettings
from auditor.keys import ModelRef

__all__ = [  # ON_TORCH and Identity: read here by the modules that read them here before the table
    "ON_TORCH",
    "Identity",
    "check_settings",
    "identify",
    "inspect_model",
    "model_ref",
    "open_suspect",
]


def identify(spec: SuspectSpec) -> Identity:
    """The cited identity of `spec` (digest None only for an HTTP endpoint, until it has answered)."""
    return spec.kind_object().identify(spec)


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
    return spec.kind_object().inspect(spec)


def check_settings(spec: SuspectSpec, settings: GenerationSettings) -> None:
    """Refuse `settings` `spec` cannot run or carry, before anything is loaded or generated (the
    workflow asks it of every suspect and reference)."""
    spec.kind_object().check_settings(spec, settings)


def open_suspect(spec: SuspectSpec, name: str | None = None) -> Generator:
    """Open `spec` as a Generator; `name` labels an HTTP endpoint in its errors."""
    check_dtype(spec.dtype)
    return spec.kind_object().open(spec, name)
