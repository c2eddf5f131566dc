"""HttpOptions: how to talk to an HTTP suspect (a job file's `http:`), every limit with a finite default.

`api` names the dialect (`_dialects.DIALECTS`: a1111, generic, comfyui); its literal is the
table's keys, which `tests/test_suspect_kinds.py` holds equal. Options that only one dialect
reads (`workflow`, `poll_interval_s`: comfyui) are checked by that dialect's `check_options`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt

from auditor.config import FrozenModel

HttpApi = Literal["a1111", "generic", "comfyui"]


class HttpOptions(FrozenModel):
    """How to talk to an HTTP suspect; every limit has a finite default."""

    api: HttpApi = Field(
        "a1111",
        description="a1111: POST /sdapi/v1/txt2img; generic: POST {prompt, seed, steps} -> {image}; "
        "comfyui: a ComfyUI server's /prompt, /history and /view, with a workflow template",
    )
    auth_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the auth header value",
    )
    auth_header: str = Field("Authorization", pattern=r"^[A-Za-z0-9-]+$")
    timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="deadline of one request, connect to last byte (comfyui: also of one queued job)",
    )
    retries: int = Field(3, ge=0, le=20, description="retries per query after the first attempt")
    backoff_s: float = Field(1.0, ge=0, le=60, description="first backoff; doubles on each retry")
    backoff_max_s: float = Field(30.0, ge=0, le=600)
    rate_limit: float | None = Field(None, gt=0, le=1000, description="max requests per second")
    max_queries: int | None = Field(None, ge=1, description="max HTTP requests in all, retries included")
    max_response_bytes: int = Field(32 * 2**20, ge=1024, le=2**30)
    sampler_name: str | None = Field(
        None, description="a1111 or comfyui sampler name; default: mapped from the scheduler"
    )
    decoys_per_key: int = Field(2, ge=0, le=20, description="decoy queries sent per key query")
    decoy_prompts: tuple[str, ...] = Field(
        (), description="decoys drawn from here; empty: recombined key words"
    )
    stealth_seed: StrictInt | None = Field(
        None, ge=0, lt=2**63, description="seed of decoys and order; None: a fresh random one"
    )
    workflow: str | None = Field(
        None,
        min_length=1,
        description="comfyui: the workflow template, an API-format JSON file with {{prompt}}, {{seed}}, "
        "{{steps}}, {{width}}, {{height}}, {{guidance}} and {{sampler}} placeholders",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, le=60, description="comfyui: pause between two polls of a queued job's history"
    )
