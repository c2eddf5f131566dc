"""What a suspect kind is: one object that detects, inspects, identifies, checks settings for and
opens its models; and what a report cites for a model (`Identity`).

The kinds are rows of one table (`_kinds.KIND_TABLE`), read by the factory (`open_suspect`,
`inspect_model`, `identify`), by `SuspectSpec.resolved_kind` (detection, in the table's order)
and by the workflow's settings check; none of them switches on a kind's name. A new kind is
one object here and its name in `_spec.SuspectKind` (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Protocol

from auditor.backends._base import Generator
from auditor.backends._pipelines import PipelineInfo
from auditor.config import FrozenModel, GenerationSettings


class Identity(FrozenModel):
    """What a report cites for a model: a display name, its digest and what kind of thing it is."""

    name: str
    digest: str | None
    kind: str  # an identity kind (auditor.identity), "engine_bundle" or "http_endpoint"
    # the weights alone (auditor.identity); None for an endpoint, and for a bundle, whose
    # manifest records only its source's byte digest
    content_digest: str | None = None


class Spec(Protocol):
    """The fields of a `SuspectSpec` a kind reads (a protocol: the kinds sit below the spec)."""

    model: str
    config: str | None
    base: str | None
    backend: str
    http: Any
    device: str
    dtype: str
    batch_size: int


class ModelKind(Protocol):
    """One kind of suspect: a diffusers folder, a checkpoint, a LoRA, a bundle, an endpoint."""

    name: str  # the `kind` of a SuspectSpec and a job entry

    def detect(self, model: str) -> bool:
        """Whether `model` (a path or URL, the kind not given) is of this kind; the table is asked
        in order and the first yes wins."""
        ...

    def inspect(self, spec: Spec) -> PipelineInfo | None:
        """The pipeline `spec` runs, from its files alone (None: not knowable, an endpoint)."""
        ...

    def identify(self, spec: Spec) -> Identity:
        """What a report cites for `spec`, before anything is generated."""
        ...

    def check_settings(self, spec: Spec, settings: GenerationSettings) -> None:
        """Refuse settings `spec` cannot run or carry, before anything is loaded or generated."""
        ...

    def open(self, spec: Spec, name: str | None = None) -> Generator:
        """`spec` as a Generator; `name` labels it in errors (an endpoint's)."""
        ...
