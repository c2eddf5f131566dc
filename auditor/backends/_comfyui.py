"""ComfyUI endpoints: a server's prompt API, driven by a workflow template the user supplies.

ComfyUI runs a graph, not a fixed txt2img request, so the user gives the graph: a workflow
exported in ComfyUI's API format (`http.workflow`), where each value the audit sets is a
placeholder string, `"{{prompt}}"`, `"{{seed}}"`, `"{{steps}}"`, `"{{width}}"`, `"{{height}}"`,
`"{{guidance}}"`, `"{{sampler}}"` (always needed), and `"{{negative_prompt}}"`, `"{{eta}}"`,
SDXL's `"{{original_height}}"`... `"{{target_width}}"` and `"{{crop_top}}"`/`"{{crop_left}}"`
(needed when the settings set them). A placeholder is a whole JSON string value and is
replaced by a typed value (numbers stay numbers). A template without the placeholder of a
setting the audit needs cannot carry it, and is refused before the first query, in one line
naming the file and the placeholder: the graph would otherwise run with whatever value it
holds, and the images would not be the keys' settings.

One query is three kinds of request, each under the client's limits (deadline, retries,
rate, budget, size): POST /prompt {prompt: graph, client_id} -> {prompt_id}; GET
/history/<prompt_id>, every `poll_interval_s` until the job is there (a job not finished
`timeout_s` after it was queued is a TransientError); GET /view?filename&subfolder&type -> the
PNG. Every reply is checked: the prompt id is a plain token (it goes into a URL), the
history holds exactly one image, its file name and subfolder are plain names (never a path),
the PNG is decoded under `_replies`' limits. The template's sha256 is recorded in the
transcript, since the graph decides the pixels as much as the server's weights do.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.backends._dialect import Exchange
from auditor.backends._replies import Retryable, checked_png, decode_png, reply_object
from auditor.config import GenerationSettings
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError, TransientError
from auditor.fileio import sha256_bytes

# Our scheduler names -> ComfyUI's KSampler sampler names (PNDM has none: set http.sampler_name).
SAMPLERS: dict[str, str] = {
    "ddim": "ddim",
    "euler": "euler",
    "euler_a": "euler_ancestral",
    "dpm++": "dpmpp_2m",
    "lms": "lms",
    "ddpm": "ddpm",
}
REQUIRED = ("prompt", "seed", "steps", "width", "height", "guidance", "sampler")
CONDITIONING = ("original_height", "original_width", "crop_top", "crop_left", "target_height", "target_width")
PLACEHOLDERS = (*REQUIRED, "negative_prompt", "eta", *CONDITIONING)
MAX_TEMPLATE_BYTES = 4 << 20
MAX_NODES = 5000
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
_PROMPT_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_ ()+,-][A-Za-z0-9_. ()+,-]{0,254}")


@dataclass(frozen=True)
class Template:
    """A loaded workflow template: the graph, the placeholders it holds, its sha256."""

    path: str
    graph: dict[str, Any]
    placeholders: frozenset[str]
    sha256: str

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        """The graph with every placeholder replaced by its typed value."""

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if isinstance(node, str) and (match := _PLACEHOLDER.fullmatch(node)):
                return values[match.group(1)]
            return node

        return walk(self.graph)


def load_template(path: str) -> Template:
    """The template at `path`, checked: an API-format graph whose placeholders are all known."""
    data = read_bytes(path, "ComfyUI workflow template", MAX_TEMPLATE_BYTES)
    graph = parse_json(data, path)
    api_format = "an API-format workflow (ComfyUI: Export (API)), {node id: {class_type, inputs}}"
    if not isinstance(graph, dict) or not graph:
        raise BadInputError(f"{path}: expected {api_format}")
    if len(graph) > MAX_NODES:
        raise BadInputError(f"{path}: {len(graph)} nodes, more than the {MAX_NODES} a template may hold")
    for node_id, node in graph.items():
        if not (
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs"), dict)
        ):
            raise BadInputError(
                f"{path}: node {node_id[:40]!r} is not {{class_type, inputs}}; expected {api_format}"
            )
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and "{{" in node:
            match = _PLACEHOLDER.fullmatch(node)
            if match is None:
                raise BadInputError(
                    f"{path}: {node[:60]!r}: a placeholder must be a whole JSON string value, such as "
                    '"{{prompt}}" (it is replaced by a typed value)'
                )
            if match.group(1) not in PLACEHOLDERS:
                raise BadInputError(
                    f"{path}: unknown placeholder {{{{{match.group(1)[:40]}}}}}; expected "
                    + ", ".join(f"{{{{{name}}}}}" for name in PLACEHOLDERS)
                )
            found.add(match.group(1))

    walk(graph)
    return Template(path=path, graph=graph, placeholders=frozenset(found), sha256=sha256_bytes(data))


@dataclass(frozen=True)
class Context:
    """What one ComfyUI generator works with: its options and its template, loaded once."""

    options: Any
    template: Template


def _sampler(settings: GenerationSettings, options: Any, where: str) -> str:
    if options.sampler_name:
        return options.sampler_name
    if settings.scheduler not in SAMPLERS:
        raise BadInputError(
            f"{where}: scheduler {settings.scheduler} has no ComfyUI sampler; name one in http.sampler_name "
            f"or use one of {', '.join(SAMPLERS)}"
        )
    return SAMPLERS[settings.scheduler]


def _values(prompt: str, seed: int, settings: GenerationSettings, sampler: str) -> dict[str, Any]:
    height, width = int(settings.height or 0), int(settings.width or 0)
    original, crop, target = settings.size_conditioning(height, width)
    return {
        "prompt": prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": seed,
        "steps": settings.steps,
        "width": width,
        "height": height,
        "guidance": settings.guidance_scale,
        "sampler": sampler,
        "eta": settings.eta,
        "original_height": original[0],
        "original_width": original[1],
        "crop_top": crop[0],
        "crop_left": crop[1],
        "target_height": target[0],
        "target_width": target[1],
    }


def needed_placeholders(settings: GenerationSettings) -> tuple[str, ...]:
    """The placeholders a template needs to carry `settings`: the required ones, and each optional
    one whose setting differs from what a graph without it does."""
    needed = list(REQUIRED)
    if settings.negative_prompt:
        needed.append("negative_prompt")
    if settings.eta:
        needed.append("eta")
    if settings.height is not None and settings.width is not None:
        size = (settings.height, settings.width)
        original, crop, target = settings.size_conditioning(*size)
        if tuple(original) != size:
            needed += ["original_height", "original_width"]
        if tuple(crop) != (0, 0):
            needed += ["crop_top", "crop_left"]
        if tuple(target) != size:
            needed += ["target_height", "target_width"]
    return tuple(needed)


class ComfyUI:
    """A ComfyUI server: submit the filled template, poll its history, fetch the image."""

    name = "comfyui"
    default_path = ""
    requests_per_query = 3  # submit, at least one poll, fetch

    def prepare(self, options: Any) -> Context:
        if not options.workflow:
            raise BadInputError(
                "http.workflow: api comfyui needs a workflow template (an API-format JSON file with "
                "{{prompt}}, {{seed}}, {{steps}}, {{width}}, {{height}}, {{guidance}} and {{sampler}} placeholders)"
            )
        return Context(options=options, template=load_template(options.workflow))

    def check_settings(self, settings: GenerationSettings, context: Context, where: str) -> None:
        template = context.template
        missing = [name for name in needed_placeholders(settings) if name not in template.placeholders]
        if missing:
            values = _values("", 0, settings, "")
            shown = ", ".join(
                f"{{{{{name}}}}}" + ("" if name in ("prompt", "seed", "sampler") else f" ({values[name]!r})")
                for name in missing
            )
            raise BadInputError(
                f"{where}: {template.path} has no {shown} placeholder, so the graph cannot carry "
                f"{'this setting' if len(missing) == 1 else 'these settings'}; put each where the graph "
                'takes it, as a whole string value (e.g. "steps": "{{steps}}")'
            )
        _sampler(settings, context.options, where)

    def fetch(
        self, exchange: Exchange, context: Context, prompt: str, seed: int, settings: GenerationSettings
    ) -> tuple[bytes, np.ndarray]:
        options = context.options
        sampler = _sampler(settings, options, exchange.name)
        graph = context.template.fill(_values(prompt, seed, settings, sampler))
        # a fresh client id per query: nothing in a request links it to the audit's other queries
        body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode("utf-8")
        prompt_id = exchange.call(
            lambda data: _prompt_id(data, exchange.name), body, path=exchange.url_path("/prompt")
        )
        history = exchange.url_path(f"/history/{prompt_id}")
        queued = time.monotonic()
        while True:
            image = exchange.call(
                lambda data: _image(data, prompt_id, exchange.name), method="GET", path=history
            )
            if image is not None:
                break
            left = queued + options.timeout_s - time.monotonic()
            if left <= 0:
                raise TransientError(
                    f"{exchange.endpoint}: ComfyUI job not finished {options.timeout_s:g} s after it was queued "
                    "(its history never showed it done); see http.timeout_s"
                )
            time.sleep(min(options.poll_interval_s, left))
        view = exchange.url_path("/view", dict(zip(("filename", "subfolder", "type"), image, strict=True)))
        return exchange.call(
            lambda data: (png := checked_png(data), decode_png(png, settings.height, settings.width)),  # type: ignore[arg-type]
            method="GET",
            path=view,
        )

    def record(self, context: Context) -> dict[str, str]:
        return {"workflow_sha256": context.template.sha256}


def _prompt_id(data: bytes, name: str) -> str:
    reply = reply_object(data)
    errors = reply.get("node_errors")
    if errors:  # the server accepted the request but refuses nodes of the graph: a resubmit cannot help
        nodes = ", ".join(str(n)[:20] for n in errors)[:120] if isinstance(errors, dict) else "?"
        raise BadInputError(f"{name}: the ComfyUI server refused nodes {nodes} of the workflow template")
    prompt_id = reply.get("prompt_id")
    if not isinstance(prompt_id, str) or not _PROMPT_ID.fullmatch(prompt_id):
        raise Retryable("response has no 'prompt_id' token (letters, digits and dashes)", network=False)
    return prompt_id


def _image(data: bytes, prompt_id: str, name: str) -> tuple[str, str, str] | None:
    """(filename, subfolder, type) of the job's one image once its history shows it, else None."""
    entry = reply_object(data).get(prompt_id)
    if entry is None:
        return None  # not finished yet
    if not isinstance(entry, dict):
        raise Retryable("the job's history entry is not a JSON object", network=False)
    status = entry.get("status")
    if isinstance(status, dict) and status.get("status_str") == "error":
        raise BadInputError(
            f"{name}: the ComfyUI server failed to run the workflow template ({_execution_error(status)}); "
            "check its nodes and models against the server"
        )
    if isinstance(status, dict) and status.get("completed") is False:
        return None
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        raise Retryable("the job's history entry has no 'outputs' object", network=False)
    images: list[Any] = []
    for output in outputs.values():
        found = output.get("images", []) if isinstance(output, dict) else None
        if not isinstance(found, list):
            raise Retryable("the job's outputs are not {node id: {images: [...]}}", network=False)
        images += found
    if len(images) != 1:
        raise Retryable(
            f"the job's outputs hold {len(images)} images, expected 1 (one image-saving node, batch size 1)",
            network=False,
        )
    image = images[0]
    if not isinstance(image, dict):
        raise Retryable("the job's output image is not {filename, subfolder, type}", network=False)
    filename, subfolder, kind = image.get("filename"), image.get("subfolder", ""), image.get("type", "output")
    if not isinstance(filename, str) or not _FILE_NAME.fullmatch(filename):
        raise Retryable(
            f"the job's output names the file {str(filename)[:60]!r}, not a plain file name", network=False
        )
    parts = subfolder.split("/") if isinstance(subfolder, str) and subfolder else []
    if not isinstance(subfolder, str) or not all(_FILE_NAME.fullmatch(p) for p in parts):
        raise Retryable(
            f"the job's output names the subfolder {str(subfolder)[:60]!r}, not a plain one", network=False
        )
    if kind not in ("output", "temp"):
        raise Retryable(
            f"the job's output is of type {str(kind)[:20]!r}, expected output or temp", network=False
        )
    return filename, subfolder, kind


def _execution_error(status: dict) -> str:
    """The node type and exception type of a failed job, printable, short."""
    for message in status.get("messages") or ():
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            detail = message[1] if isinstance(message[1], dict) else {}
            text = f"{detail.get('node_type', '?')}: {detail.get('exception_type', '?')}"
            return "".join(c for c in text if " " <= c <= "~")[:120]
    return "execution error"


COMFYUI_DIALECT = ComfyUI()
