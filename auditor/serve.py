"""`t2i-audit serve`: a local model behind the AUTOMATIC1111 txt2img API (and the generic one).

It exists so that the black-box path can be exercised end to end over a real socket: tests
start it on loopback and audit it as an HTTP suspect, and an owner can check what a
suspect's API would return for their own model. It is no production server: one
generation at a time (a lock), bounded request bodies, no auth. It listens on loopback
unless told otherwise.

Endpoints:
- `POST /sdapi/v1/txt2img` {prompt, negative_prompt, seed, steps, cfg_scale, width, height,
  sampler_name, batch_size: 1} -> {"images": [base64 PNG], "parameters": {...}, "info": "..."}
- `POST /generate` {prompt, seed, steps} -> {"image": base64 PNG} (the generic API)
- `GET /health` -> {"status": "ok"}; `GET /sdapi/v1/samplers` -> the sampler names understood
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pydantic import ValidationError

import auditor.backends._a1111 as a1111
from auditor.config import GenerationSettings
from auditor.documents import parse_json
from auditor.errors import AuditorError, BadInputError
from auditor.images import encode_png

MAX_REQUEST_BYTES = 1 << 20


class _BadRequest(Exception):
    pass


class SuspectServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding one Generator, used by one request at a time."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, generator, defaults: GenerationSettings | None = None, log=None) -> None:
        super().__init__(address, _Handler)
        self.generator = generator
        self.defaults = defaults or GenerationSettings()
        self.lock = threading.Lock()
        self.log = log
        self.served = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def settings_for(self, body: dict, generic: bool) -> tuple[str, int, GenerationSettings]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _BadRequest("'prompt': expected a non-empty string")
        seed = body.get("seed", -1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _BadRequest("'seed': expected an integer")
        if seed < 0:  # AUTOMATIC1111: -1 is a random seed
            seed = secrets.randbelow(2**32)
        try:
            values = a1111.settings_values(body, self.defaults.model_dump(), generic)
        except a1111.PayloadError as exc:
            raise _BadRequest(str(exc)) from None
        try:
            settings = GenerationSettings.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise _BadRequest(f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}") from None
        return prompt, seed, settings

    def generate_png(self, prompt: str, seed: int, settings: GenerationSettings) -> bytes:
        with self.lock:
            image = self.generator.generate([prompt], [seed], settings)[0]
            self.served += 1
        return encode_png(image)


class _Handler(BaseHTTPRequestHandler):
    server: SuspectServer
    server_version = "t2i-audit-serve"
    timeout = 60  # a client that stops sending mid-request cannot hold a thread forever

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/sdapi/v1/samplers":
            self._send(
                200, [{"name": name, "aliases": [], "options": {}} for name in a1111.SAMPLERS.values()]
            )
        else:
            self._send(404, {"error": f"no such endpoint: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path not in (a1111.A1111_PATH, a1111.GENERIC_PATH):
            self._send(404, {"error": f"no such endpoint: {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "Content-Length required"})
            return
        if not 0 < length <= MAX_REQUEST_BYTES:
            self._send(413, {"error": f"request body must be 1 to {MAX_REQUEST_BYTES} bytes"})
            return
        generic = path == a1111.GENERIC_PATH
        try:
            body = parse_json(self.rfile.read(length), "request body")
            if not isinstance(body, dict):
                raise _BadRequest("expected a JSON object")
            prompt, seed, settings = self.server.settings_for(body, generic)
        except BadInputError as exc:  # syntax, depth, number size, NaN, duplicate keys
            self._send(400, {"error": f"malformed JSON: {exc}"})
            return
        except _BadRequest as exc:
            self._send(400, {"error": str(exc)})
            return
        try:
            png = self.server.generate_png(prompt, seed, settings)
        except AuditorError as exc:
            self._send(400 if exc.exit_code == 2 else 503, {"error": str(exc)})
            return
        except Exception as exc:  # one bad request must not take the server down
            self._send(500, {"error": f"generation failed ({type(exc).__name__})"})
            return
        encoded = base64.b64encode(png).decode("ascii")
        if generic:
            self._send(200, {"image": encoded})
            return
        parameters = a1111.response_parameters(prompt, seed, settings)
        self._send(200, {"images": [encoded], "parameters": parameters, "info": json.dumps({"seed": seed})})


def start_server(
    generator, host: str = "127.0.0.1", port: int = 0, defaults: GenerationSettings | None = None, log=None
) -> tuple[SuspectServer, threading.Thread]:
    """Serve `generator` from a background thread; stop with `stop_server(server, thread)`."""
    server = SuspectServer((host, port), generator, defaults=defaults, log=log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server, thread


def stop_server(server: SuspectServer, thread: threading.Thread, timeout: float = 10.0) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout)
