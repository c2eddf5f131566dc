"""A loopback ComfyUI server: the prompt API (POST /prompt, GET /history/<id>, GET /view) over a
real generator or deterministic noise, and every way its replies can be hostile.

Requests go to `/MODE/prompt`, `/MODE/history/<id>` and `/MODE/view?...`: MODE (see `MODES`)
picks the misbehaviour, so one server serves every case of a test module. The graph a client
submits is read like ComfyUI reads the stock txt2img graph (KSampler, its two CLIPTextEncode
inputs, EmptyLatentImage), with ComfyUI's own refusals: a 400 with `node_errors` for a value of
the wrong type or an unknown sampler.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from auditor.config import GenerationSettings
from auditor.images import encode_png

# ComfyUI's sampler names back to our schedulers (what the fake can render)
SCHEDULERS = {
    "ddim": "ddim",
    "euler": "euler",
    "euler_ancestral": "euler_a",
    "dpmpp_2m": "dpm++",
    "lms": "lms",
}

# The stock txt2img graph in ComfyUI's API format, every audited value a placeholder.
TEMPLATE: dict = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": "{{steps}}",
            "cfg": "{{guidance}}",
            "sampler_name": "{{sampler}}",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "suspect.safetensors"}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "audit", "images": ["8", 0]}},
}

# mode -> what the client must make of it: "ok", "transient" (exit 75) or "bad" (exit 2)
MODES: dict[str, str] = {
    "ok": "ok",
    "prompt_bad_json": "bad",  # POST /prompt answers "{not json"
    "prompt_no_id": "bad",  # {"number": 1}
    "prompt_id_path": "bad",  # a prompt id that is a path
    "node_errors": "bad",  # 200, but the server refuses a node
    "history_huge": "bad",  # a history body past max_response_bytes
    "history_not_object": "bad",
    "missing_outputs": "bad",  # done, no outputs
    "two_images": "bad",
    "traversal": "bad",  # filename "../../etc/passwd"
    "subfolder_traversal": "bad",  # subfolder "../../etc"
    "odd_type": "bad",  # type "input"
    "exec_error": "bad",  # status_str error
    "never": "transient",  # the history never shows the job
    "view_not_png": "bad",
    "view_wrong_size": "bad",
    "err500_once": "ok",  # the first /prompt of each query fails with a 500, the retry succeeds
}


def noise(prompt: str, seed: int, settings: GenerationSettings) -> np.ndarray:
    """Deterministic pixels for a query (every setting in the hash)."""
    key = f"{prompt}|{seed}|{settings.steps}|{settings.guidance_scale}|{settings.scheduler}"
    digest = hashlib.sha256(key.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 256, size=(settings.height, settings.width, 3), dtype=np.uint8)


class _Refused(ValueError):
    pass


def read_graph(graph: dict) -> tuple[str, int, GenerationSettings]:
    """(prompt, seed, settings) of a submitted stock graph, refusing what ComfyUI would."""
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")["inputs"]
    latent = graph[sampler["latent_image"][0]]["inputs"]
    text = graph[sampler["positive"][0]]["inputs"]["text"]
    negative = graph[sampler["negative"][0]]["inputs"]["text"]
    for value, kind in (
        (sampler["seed"], int),
        (sampler["steps"], int),
        (latent["width"], int),
        (latent["height"], int),
        (text, str),
        (negative, str),
    ):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _Refused(f"{value!r} is not a {kind.__name__}")
    if not isinstance(sampler["cfg"], int | float) or sampler["sampler_name"] not in SCHEDULERS:
        raise _Refused("cfg or sampler_name")
    settings = GenerationSettings(
        steps=sampler["steps"],
        guidance_scale=sampler["cfg"],
        scheduler=SCHEDULERS[sampler["sampler_name"]],
        height=latent["height"],
        width=latent["width"],
        negative_prompt=negative,
    )
    return text, sampler["seed"], settings


class _Handler(BaseHTTPRequestHandler):
    server: FakeComfyUI

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj).encode())

    def _route(self) -> tuple[str, str, dict]:
        parts = urlsplit(self.path)
        mode, _, rest = parts.path.strip("/").partition("/")
        with self.server.lock:
            self.server.calls.append((mode, rest.split("/")[0]))
        return mode, rest, parse_qs(parts.query)

    def do_POST(self) -> None:  # noqa: N802
        mode, rest, _ = self._route()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if rest != "prompt":
            return self._json(404, {"error": "not found"})
        server = self.server
        with server.lock:
            server.graphs.append(body["prompt"])
            server.submits[mode] = n = server.submits.get(mode, 0) + 1
        if mode == "err500_once" and n % 2:
            return self._json(500, {"error": "busy"})
        try:
            prompt, seed, settings = read_graph(body["prompt"])
        except (_Refused, KeyError, StopIteration, TypeError) as exc:
            return self._json(
                400, {"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": {"3": str(exc)}}
            )
        if mode == "prompt_bad_json":
            return self._send(200, b"{not json")
        if mode == "prompt_no_id":
            return self._json(200, {"number": 1})
        if mode == "node_errors":
            return self._json(
                200, {"prompt_id": "x", "number": 1, "node_errors": {"4": {"errors": ["no ckpt"]}}}
            )
        prompt_id = "../../x" if mode == "prompt_id_path" else str(uuid.uuid4())
        png = encode_png(server.render(prompt, seed, settings))
        if mode == "view_wrong_size":
            png = encode_png(np.zeros((8, 8, 3), np.uint8))
        with server.lock:
            server.jobs[prompt_id] = (png, server.polls_until_done)
            server.queried.append((prompt, seed))
        self._json(200, {"prompt_id": prompt_id, "number": len(server.jobs), "node_errors": {}})

    def do_GET(self) -> None:  # noqa: N802
        mode, rest, query = self._route()
        server = self.server
        if rest.startswith("history/"):
            prompt_id = rest.partition("/")[2]
            with server.lock:
                png, left = server.jobs.get(prompt_id, (b"", 0))
                server.jobs[prompt_id] = (png, left - 1)
            if mode == "never" or left > 0:
                return self._json(200, {})
            return self._history(mode, prompt_id, png)
        if rest == "view":
            name = query.get("filename", [""])[0]
            if mode == "view_not_png":
                return self._send(200, b"<html>not an image</html>", "text/html")
            with server.lock:
                png = server.files.get(name)
            if png is None:
                return self._json(404, {"error": "no such file"})
            return self._send(200, png, "image/png")
        self._json(404, {"error": "not found"})

    def _history(self, mode: str, prompt_id: str, png: bytes) -> None:
        name = f"audit_{uuid.uuid4().hex[:8]}_.png"
        with self.server.lock:
            self.server.files[name] = png
            self.server.served.add(hashlib.sha256(png).hexdigest())
        image = {"filename": name, "subfolder": "", "type": "output"}
        done = {"status_str": "success", "completed": True, "messages": []}
        if mode == "history_huge":
            return self._send(200, b'{"x": "' + b"a" * 200_000 + b'"}')
        if mode == "history_not_object":
            return self._json(200, {prompt_id: [1, 2]})
        if mode == "missing_outputs":
            return self._json(200, {prompt_id: {"status": done, "outputs": {}}})
        if mode == "two_images":
            return self._json(
                200, {prompt_id: {"status": done, "outputs": {"9": {"images": [image, image]}}}}
            )
        if mode == "traversal":
            image = image | {"filename": "../../etc/passwd"}
        if mode == "subfolder_traversal":
            image = image | {"subfolder": "../../etc"}
        if mode == "odd_type":
            image = image | {"type": "input"}
        if mode == "exec_error":
            failed = {
                "status_str": "error",
                "completed": False,
                "messages": [
                    ["execution_error", {"node_type": "KSampler", "exception_type": "RuntimeError"}]
                ],
            }
            return self._json(200, {prompt_id: {"status": failed, "outputs": {}}})
        self._json(200, {prompt_id: {"prompt": [], "status": done, "outputs": {"9": {"images": [image]}}}})


class FakeComfyUI(ThreadingHTTPServer):
    """Loopback; `render(prompt, seed, settings)` makes the pixels (default: `noise`)."""

    daemon_threads = True

    def __init__(
        self,
        render: Callable[[str, int, GenerationSettings], np.ndarray] = noise,
        polls_until_done: int = 1,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.render = render
        self.polls_until_done = polls_until_done  # history answers {} this many times first
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []  # (mode, endpoint) of every request
        self.graphs: list[dict] = []
        self.submits: dict[str, int] = {}
        self.jobs: dict[str, tuple[bytes, int]] = {}
        self.files: dict[str, bytes] = {}
        self.queried: list[tuple[str, int]] = []
        self.served: set[str] = set()  # sha256 of every PNG a history pointed to
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up mid-answer is expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeComfyUI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def write_template(path, graph: dict | None = None, drop: tuple[str, ...] = ()) -> str:
    """The stock template (or `graph`) at `path`, with the placeholders in `drop` replaced by fixed values."""
    text = json.dumps(graph or TEMPLATE, indent=1)
    for name in drop:
        text = text.replace(f'"{{{{{name}}}}}"', "7" if name != "prompt" else '"fixed"')
    path.write_text(text)
    return str(path)
