"""The AUTOMATIC1111 txt2img payload, both ways: what the HTTP client sends and what `serve` reads;
and the two dialects that speak it (`A1111`, and `GENERIC`: the minimal {prompt, seed, steps} API).

One mapping, so the client and the server can never disagree on a field: our settings
-> {prompt, negative_prompt, seed, steps, cfg_scale, width, height, sampler_name,
batch_size: 1, n_iter: 1}, and back, tolerating the extra fields real A1111 clients
send (hires, styles, subseeds: ignored).

SDXL: AUTOMATIC1111 conditions an SDXL model on original_size = target_size = (height, width)
and on the crop in its options `sdxl_crop_top` / `sdxl_crop_left` (default 0), which a
request sets through `override_settings`. So a crop other than (0, 0) travels there, and
settings whose original or target size differ from the image size cannot be sent at all
(`check_expressible`: refused before the first query). `serve` reads the same fields back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from auditor.backends._dialect import Exchange
from auditor.backends._replies import Retryable, base64_png, decode_png, reply_object
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

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


CROP_OPTIONS = ("sdxl_crop_top", "sdxl_crop_left")  # A1111's options for SDXL's crop conditioning


def check_expressible(settings: GenerationSettings, where: str) -> None:
    """Refuse SDXL size conditioning an A1111 request cannot carry (see module doc)."""
    size = (settings.height, settings.width)
    for name in ("original_size", "target_size"):
        value = getattr(settings, name)
        if value is not None and tuple(value) != size:
            raise BadInputError(
                f"{where}: the A1111 txt2img API conditions SDXL on {name} = (height, width) = "
                f"{size[0]}x{size[1]}; these settings ask {value[0]}x{value[1]}, which no request can carry"
            )


def payload(prompt: str, seed: int, settings: GenerationSettings, sampler_name: str | None = None) -> dict:
    """The A1111 txt2img request for one image."""
    crop = settings.crops_coords_top_left
    extra = {"override_settings": dict(zip(CROP_OPTIONS, crop, strict=True))} if crop and any(crop) else {}
    return extra | {
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
    if "width" in body or "height" in body:  # A1111: SDXL's original and target size are the request's size
        values["original_size"] = values["target_size"] = None
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise PayloadError("'override_settings': expected an object")
    if any(name in overrides for name in CROP_OPTIONS):
        crop = tuple(overrides.get(name, 0) for name in CROP_OPTIONS)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in crop):
            raise PayloadError(f"'override_settings': {', '.join(CROP_OPTIONS)} must be integers >= 0")
        values["crops_coords_top_left"] = crop
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


# ---------------------------------------------------------------- the dialects


class A1111:
    """POST /sdapi/v1/txt2img {prompt, negative_prompt, seed, steps, cfg_scale, ...} -> {"images": [b64]}."""

    name = "a1111"
    default_path = A1111_PATH
    requests_per_query = 1

    def prepare(self, options: Any) -> Any:
        return options

    def check_settings(self, settings: GenerationSettings, context: Any, where: str) -> None:
        check_expressible(settings, where)

    def fetch(
        self, exchange: Exchange, context: Any, prompt: str, seed: int, settings: GenerationSettings
    ) -> tuple[bytes, np.ndarray]:
        body = json.dumps(payload(prompt, seed, settings, context.sampler_name)).encode("utf-8")
        return exchange.call(lambda data: _decoded(self._png(data), settings), body)

    @staticmethod
    def _png(data: bytes) -> bytes:
        images = reply_object(data).get("images")
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise Retryable("response has no 'images' list of base64 strings", network=False)
        return base64_png(images[0])

    def record(self, context: Any) -> dict[str, str]:
        return {}


class Generic(A1111):
    """POST {prompt, seed, steps} -> {"image": b64}: carries no other setting, and refuses none."""

    name = "generic"
    default_path = GENERIC_PATH

    def check_settings(self, settings: GenerationSettings, context: Any, where: str) -> None:
        return None

    def fetch(
        self, exchange: Exchange, context: Any, prompt: str, seed: int, settings: GenerationSettings
    ) -> tuple[bytes, np.ndarray]:
        body = json.dumps(generic_payload(prompt, seed, settings)).encode("utf-8")
        return exchange.call(lambda data: _decoded(self._png(data), settings), body)

    @staticmethod
    def _png(data: bytes) -> bytes:
        encoded = reply_object(data).get("image")
        if not isinstance(encoded, str):
            raise Retryable("response has no 'image' base64 string", network=False)
        return base64_png(encoded)


def _decoded(png: bytes, settings: GenerationSettings) -> tuple[bytes, np.ndarray]:
    return png, decode_png(png, settings.height, settings.width)  # type: ignore[arg-type]


A1111_DIALECT = A1111()
GENERIC_DIALECT = Generic()
