"""The AUTOMATIC1111 txt2img payload, both ways: what the HTTP client sends and what `serve` reads.

One mapping, so the client and the server can never disagree on a field: our settings
-> {prompt, negative_prompt, seed, steps, cfg_scale, width, height, sampler_name,
batch_size: 1, n_iter: 1}, and back, tolerating the extra fields real A1111 clients
send (hires, styles, subseeds: ignored).
"""

from __future__ import annotations

from typing import Any

from auditor.config import GenerationSettings

A1111_PATH = "/sdapi/v1/txt2img"
GENERIC_PATH = "/generate"

# Our scheduler names -> AUTOMATIC1111 sampler names.
SAMPLERS: dict[str, str] = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpm++": "DPM++ 2M",
    "lms": "LMS",
    "ddpm": "DDPM",
}
# And back, with the aliases clients use.
SCHEDULERS: dict[str, str] = {v.lower(): k for k, v in SAMPLERS.items()} | {
    "euler_a": "euler_a",
    "dpm++ 2m karras": "dpm++",
    "ddim": "ddim",
}


class PayloadError(ValueError):
    """A request field the server cannot honour; the message names the field."""


def payload(prompt: str, seed: int, settings: GenerationSettings, sampler_name: str | None = None) -> dict:
    """The A1111 txt2img request for one image."""
    return {
        "prompt": prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": seed,
        "steps": settings.steps,
        "cfg_scale": settings.guidance_scale,
        "width": settings.width,
        "height": settings.height,
        "sampler_name": sampler_name or SAMPLERS[settings.scheduler],
        "batch_size": 1,
        "n_iter": 1,
    }


def generic_payload(prompt: str, seed: int, settings: GenerationSettings) -> dict:
    """The minimal JSON API: {prompt, seed, steps} -> {image}."""
    return {"prompt": prompt, "seed": seed, "steps": settings.steps}


def settings_values(body: dict[str, Any], defaults: dict[str, Any], generic: bool) -> dict[str, Any]:
    """GenerationSettings fields from a request body, over `defaults` (validated by the caller)."""
    values = dict(defaults)
    if "steps" in body:
        values["steps"] = body["steps"]
    if generic:
        return values
    if body.get("batch_size", 1) != 1 or body.get("n_iter", 1) != 1:
        raise PayloadError("'batch_size' and 'n_iter': only 1 is supported")
    for src, dst in (("cfg_scale", "guidance_scale"), ("width", "width"), ("height", "height")):
        if src in body:
            values[dst] = body[src]
    if "negative_prompt" in body:
        values["negative_prompt"] = body["negative_prompt"] or ""
    sampler = body.get("sampler_name")
    if sampler:
        scheduler = SCHEDULERS.get(str(sampler).lower())
        if scheduler is None:
            raise PayloadError(f"'sampler_name': {str(sampler)[:80]!r} is not supported")
        values["scheduler"] = scheduler
    return values


def response_parameters(prompt: str, seed: int, settings: GenerationSettings) -> dict:
    """The `parameters` object of an A1111 reply."""
    return {
        "prompt": prompt,
        "seed": seed,
        "steps": settings.steps,
        "cfg_scale": settings.guidance_scale,
        "width": settings.width,
        "height": settings.height,
        "sampler_name": SAMPLERS[settings.scheduler],
    }
