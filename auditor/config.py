"""Typed configuration shared by key selection, audits and reports.

Frozen pydantic models with `extra="forbid"`: a typo in a job file is an error, not a
silently ignored field, and the resolved config can be embedded verbatim in a report so
that a rerun uses exactly the same settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SchedulerName = Literal["ddim", "pndm", "euler", "euler_a", "dpm++", "ddpm", "lms"]


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

    @model_validator(mode="after")
    def _multiple_of_8(self) -> GenerationSettings:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {value}")
        return self


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
