"""Typed configuration shared by key selection, audits and reports.

Frozen pydantic models with `extra="forbid"`: a typo in a job file is an error, not a
silently ignored field, and the resolved config can be embedded verbatim in a report so
that a rerun uses exactly the same settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

SchedulerName = Literal["ddim", "pndm", "euler", "euler_a", "dpm++", "ddpm", "lms"]
Size = tuple[Annotated[int, Field(ge=1, le=16384)], Annotated[int, Field(ge=1, le=16384)]]
Crop = tuple[Annotated[int, Field(ge=0, le=16384)], Annotated[int, Field(ge=0, le=16384)]]


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerationSettings(FrozenModel):
    """How an image is regenerated; everything here changes pixels, so all of it is recorded."""

    steps: int = Field(20, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0, description="classifier-free guidance scale")
    scheduler: SchedulerName = "ddim"
    height: int | None = Field(None, ge=8, le=4096, description="pixels; None = the model's default")
    width: int | None = Field(None, ge=8, le=4096, description="pixels; None = the model's default")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta (0 = deterministic sampler)")
    negative_prompt: str = ""
    # SDXL's size conditioning (add_time_ids); SD 1.x/2.x pipelines have none and ignore these.
    original_size: Size | None = Field(
        None, description="SDXL: original_size (height, width) conditioning; None = (height, width)"
    )
    crops_coords_top_left: Crop | None = Field(
        None, description="SDXL: crops_coords_top_left (top, left) conditioning; None = (0, 0)"
    )
    target_size: Size | None = Field(
        None, description="SDXL: target_size (height, width) conditioning; None = (height, width)"
    )

    @model_validator(mode="after")
    def _multiple_of_8(self) -> GenerationSettings:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {value}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler):
        """Fields added after v1 are left out while None, in every dump: keysets, audit tokens, reference
        caches and reports written before them keep their digests (auditor.keys.keyset_document)."""
        data = handler(self)
        for name in ADDED_GENERATION_FIELDS:
            if isinstance(data, dict) and data.get(name, 0) is None:
                del data[name]
        return data

    def size_conditioning(self, height: int, width: int) -> tuple[Size, Crop, Size]:
        """SDXL's (original_size, crops_coords_top_left, target_size) at an image of height x width."""
        return (
            self.original_size or (height, width),
            self.crops_coords_top_left or (0, 0),
            self.target_size or (height, width),
        )


ADDED_GENERATION_FIELDS = ("original_size", "crops_coords_top_left", "target_size")


class AuditConfig(FrozenModel):
    """The audit: paper defaults delta0 = 0.15 and M = 30 keys; J audit seeds per key."""

    delta0: float = Field(0.15, gt=0.0, lt=1.0, description="reconstruction-distance threshold for a hit")
    distance: str = Field("l2", description="registered distance name (see auditor.distance)")
    seeds_per_key: int = Field(
        4,
        ge=1,
        le=64,
        description="J: suspect generations per key, each with its own seed; the min distance counts",
    )
    audit_nonce: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="derives every (key, j) audit seed; None: derived from the keyset digest (recorded)",
    )
    max_keys: int | None = Field(None, ge=1, description="audit only the first N keys of the keyset")
    conf_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="the paper's fixed-threshold figure: infringing when conf >= this"
    )
    min_references: int = Field(
        5, ge=3, le=1000, description="fewer innocent references than this: the verdict is inconclusive"
    )
    batch_size: int = Field(16, ge=1, le=1024)
