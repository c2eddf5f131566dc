"""`t2i-audit serve`: a local model behind the AUTOMATIC1111 txt2img API (and the generic one).

It exists so that the black-box path can be exercised end to end over a real socket: tests
start it on loopback and audit it as an HTTP suspect, and an owner can check what a
suspect's API would return for their own model. It is no production server (no auth, one
model), but no request can take it over either (`ServeLimits`):

- **budget**: a request may ask for at most `max_pixels` (default: the served model's own
  resolution, or the defaults' size if larger) and `max_steps`, and only for settings the
  model's scheduler can run; anything more is a 400 before any work;
- **one model, a bounded queue**: one worker thread generates, one request at a time; at
  most `queue` requests wait for it, and a request beyond that is answered 503 at once
  (with Retry-After), as is a connection beyond `max_connections` (each connection is a
  thread);
- **time**: a client has `read_timeout_s` to send its request (a watchdog shuts the socket
  down then, whatever it drips), and a request gets `request_timeout_s` in all, queue
  included: then it is answered 503 and its generation is stopped between two denoising
  steps (a generator whose `generate` takes `stop=`; others finish their image first);
- **answers**: every malformed body (not JSON, deeper than 64 levels, numbers of 5,000
  digits, wrong types, unknown samplers) gets a 400 with a JSON `{"error": ...}`; nothing a
  client sends kills a handler thread without an answer. Extra fields real A1111 clients
  send are accepted and ignored.

Endpoints:
- `POST /sdapi/v1/txt2img` {prompt, negative_prompt, seed, steps, cfg_scale, width, height,
  sampler_name, batch_size: 1} -> {"images": [base64 PNG], "parameters": {...}, "info": "..."}
- `POST /generate` {prompt, seed, steps} -> {"image": base64 PNG} (the generic API)
- `GET /health` -> {"status": "ok"}; `GET /sdapi/v1/samplers` -> the sampler names understood
"""

from __future__ import annotations

import base64
import inspect
import json
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from auditor.backends import (
    A1111_PATH,
    A1111_SAMPLERS,
    GENERIC_PATH,
    PayloadError,
    response_parameters,
    settings_values,
)
from auditor.config import FrozenModel, GenerationSettings
from auditor.deadline import Watchdog
from auditor.documents import parse_json
from auditor.errors import AuditorError, BadInputError, first_line
from auditor.images import encode_png

MAX_REQUEST_BYTES = 1 << 20
MAX_PROMPT_CHARS = 10_000
FALLBACK_PIXELS = 1024 * 1024  # a generator that cannot say its resolution


class ServeLimits(FrozenModel):
    """What one request may cost the server; every limit finite."""

    max_pixels: int | None = Field(
        None, ge=64, le=4096 * 4096, description="width x height per request; None: the model's resolution"
    )
    max_steps: int = Field(150, ge=1, le=1000, description="denoising steps per request")
    queue: int = Field(4, ge=0, le=1024, description="requests waiting for the model; more get 503")
    max_connections: int = Field(16, ge=1, le=1024, description="connections served at once; more get 503")
    request_timeout_s: float = Field(
        300.0, gt=0, le=86400, description="queue wait and generation, per request"
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=600, description="to send the request line, headers and body"
    )


class _BadRequest(Exception):
    pass


@dataclass
class _Job:
    prompt: str
    seed: int
    settings: GenerationSettings
    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    png: bytes | None = None
    error: BaseException | None = None


def model_pixels(generator, defaults: GenerationSettings) -> int:
    """The default pixel budget: the served model's resolution (or the defaults' size, if larger)."""
    native = getattr(generator, "native_size", None)
    area = 0
    try:
        if callable(native):
            height, width = native()
            area = int(height) * int(width)
    except Exception:  # a generator that cannot tell: the fallback
        area = 0
    if defaults.height and defaults.width:
        area = max(area, defaults.height * defaults.width)
    return area or FALLBACK_PIXELS


class SuspectServer(ThreadingHTTPServer):
    """One Generator, one worker thread, a bounded queue and a bounded number of connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address,
        generator,
        defaults: GenerationSettings | None = None,
        log=None,
        limits: ServeLimits | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.generator = generator
        self.defaults = defaults or GenerationSettings()
        self.limits = limits or ServeLimits()
        self.max_pixels = self.limits.max_pixels or model_pixels(generator, self.defaults)
        self.log = log
        self.served = 0
        self.refused = 0  # 503s: queue full, too many connections, or out of time
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=self.limits.queue or 1)
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._busy = threading.Lock()  # held by the worker while it generates
        self._stopping = threading.Event()
        self._current: _Job | None = None
        self._can_stop = "stop" in inspect.signature(generator.generate).parameters
        self._worker = threading.Thread(target=self._work, name="serve-worker", daemon=True)
        self._worker.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    # ------------------------------------------------------------ connections

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            _refuse_at_once(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that went away mid-answer, or a bug: one line, never a traceback on stderr.
        import sys

        exc = sys.exc_info()[1]
        if self.log is not None and exc is not None:
            self.log(f"{client_address[0]} connection ended: {type(exc).__name__}: {first_line(exc, 120)}")

    def server_close(self) -> None:
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancel.set()  # stopped between two steps where the generator allows it
        super().server_close()
        self._worker.join(5)

    # ------------------------------------------------------------ requests

    def settings_for(self, body: dict, generic: bool) -> tuple[str, int, GenerationSettings]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _BadRequest("'prompt': expected a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _BadRequest(f"'prompt': {len(prompt)} characters, at most {MAX_PROMPT_CHARS} accepted")
        negative = body.get("negative_prompt")
        if isinstance(negative, str) and len(negative) > MAX_PROMPT_CHARS:
            raise _BadRequest(f"'negative_prompt': at most {MAX_PROMPT_CHARS} characters accepted")
        seed = body.get("seed", -1)
        # [0, 2**63), or AUTOMATIC1111's -1 for a random seed; any other negative is refused, not
        # read as -1 (A1111 itself would, but a seed of -2**70 is a client bug, not a request).
        if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed < 2**63:
            raise _BadRequest("'seed': expected an integer in [0, 2**63), or -1 for a random one")
        if seed == -1:
            seed = secrets.randbelow(2**32)
        try:
            values = settings_values(body, self.defaults.model_dump(), generic)
        except PayloadError as exc:
            raise _BadRequest(str(exc)) from None
        try:
            settings = GenerationSettings.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise _BadRequest(f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}") from None
        self.check_budget(settings)
        return prompt, seed, settings

    def check_budget(self, settings: GenerationSettings) -> None:
        """Pixels, steps and the scheduler: refused before the request is queued."""
        height, width = settings.height, settings.width
        if height is None or width is None:
            native = getattr(self.generator, "native_size", None)
            if callable(native):
                height, width = (height or native()[0]), (width or native()[1])
        if height and width and height * width > self.max_pixels:
            raise _BadRequest(
                f"'width' x 'height': {width}x{height} is {width * height} pixels, more than this server's "
                f"budget of {self.max_pixels} per request"
            )
        if settings.steps > self.limits.max_steps:
            raise _BadRequest(
                f"'steps': {settings.steps}, more than this server's budget of {self.limits.max_steps}"
            )
        check = getattr(self.generator, "check_settings", None)
        if callable(check):
            try:
                check(settings)
            except AuditorError as exc:
                raise _BadRequest(str(exc)) from None

    def submit(self, prompt: str, seed: int, settings: GenerationSettings) -> _Job:
        """Queue a generation; queue.Full when `queue` requests already wait."""
        job = _Job(prompt, seed, settings, deadline=time.monotonic() + self.limits.request_timeout_s)
        if self.limits.queue == 0 and self._busy.locked():
            raise queue.Full
        self.jobs.put_nowait(job)
        return job

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._busy:
                self._current = job
                if job.cancel.is_set() or time.monotonic() >= job.deadline:
                    job.done.set()  # given up on while it waited: never started
                    continue
                try:
                    job.png = self.generate_png(job)
                except BaseException as exc:  # handed to the request's thread, which answers it
                    job.error = exc
                finally:
                    job.done.set()
                    self._current = None

    def generate_png(self, job: _Job) -> bytes:
        def stop() -> bool:
            return job.cancel.is_set() or time.monotonic() >= job.deadline

        args = ([job.prompt], [job.seed], job.settings)
        image = (
            self.generator.generate(*args, stop=stop) if self._can_stop else self.generator.generate(*args)
        )
        self.served += 1
        return encode_png(image[0])


def _refuse_at_once(request: socket.socket) -> None:
    """A best-effort 503 on a connection no thread is left for: never blocks the accept loop."""
    body = json.dumps({"error": "server busy: too many connections; retry later"}).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        request.setblocking(False)
        try:
            request.recv(65536)  # what has arrived of the request: unread data would turn close into a reset
        except OSError:
            pass
        request.send(head + body)
        request.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: SuspectServer
    server_version = "t2i-audit-serve"
    default_request_version = "HTTP/1.0"  # answers to unparsable request lines get a status line too

    def setup(self) -> None:
        limits = self.server.limits
        self.timeout = limits.read_timeout_s  # per socket operation; the watchdog bounds them all
        super().setup()
        self.watchdog = Watchdog(time.monotonic() + limits.read_timeout_s)
        self.watchdog.watch(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.watchdog.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unsupported method) as JSON too."""
        self.close_connection = True
        try:
            self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})
        except OSError:
            pass

    def _send(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _busy(self, message: str) -> None:
        self.server.refused += 1
        self._send(503, {"error": message}, {"Retry-After": "1"})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/sdapi/v1/samplers":
            self._send(
                200, [{"name": name, "aliases": [], "options": {}} for name in A1111_SAMPLERS.values()]
            )
        else:
            self._send(404, {"error": f"no such endpoint: {path[:200]}"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path not in (A1111_PATH, GENERIC_PATH):
            self._send(404, {"error": f"no such endpoint: {path[:200]}"})
            return
        length_text = (self.headers.get("Content-Length") or "").strip()
        if not length_text.isdigit() or len(length_text) > 12:
            self._send(411, {"error": f"a Content-Length of 1 to {MAX_REQUEST_BYTES} bytes is required"})
            return
        length = int(length_text)
        if not 0 < length <= MAX_REQUEST_BYTES:
            self._send(413, {"error": f"request body must be 1 to {MAX_REQUEST_BYTES} bytes"})
            return
        generic = path == GENERIC_PATH
        try:
            data = self.rfile.read(length)
            if self.watchdog.expired() or len(data) < length:
                self.close_connection = True
                return  # the client ran out of time sending its body: nobody to answer
            body = parse_json(data, "request body")
            if not isinstance(body, dict):
                raise _BadRequest("expected a JSON object")
            prompt, seed, settings = self.server.settings_for(body, generic)
        except BadInputError as exc:  # syntax, depth, number size, NaN, duplicate keys
            self._send(400, {"error": f"malformed JSON: {exc}"})
            return
        except _BadRequest as exc:
            self._send(400, {"error": str(exc)})
            return
        except Exception as exc:  # a request nothing above foresaw: still an answer, never a dead thread
            self._send(400, {"error": f"malformed request ({type(exc).__name__})"})
            return
        limits = self.server.limits
        # from here the request has request_timeout_s, and its answer read_timeout_s more to be sent
        self.watchdog.rearm(time.monotonic() + limits.request_timeout_s + limits.read_timeout_s)
        try:
            job = self.server.submit(prompt, seed, settings)
        except queue.Full:
            self._busy(f"server busy: {limits.queue} requests already wait for the model; retry later")
            return
        if not job.done.wait(max(0.0, job.deadline - time.monotonic())):
            job.cancel.set()  # the worker stops it between two steps, or never starts it
            self._busy(f"request took longer than this server's limit of {limits.request_timeout_s:g} s")
            return
        if job.png is None:
            self._answer_failure(job)
            return
        encoded = base64.b64encode(job.png).decode("ascii")
        if generic:
            self._send(200, {"image": encoded})
            return
        parameters = response_parameters(prompt, seed, settings)
        self._send(200, {"images": [encoded], "parameters": parameters, "info": json.dumps({"seed": seed})})

    def _answer_failure(self, job: _Job) -> None:
        exc = job.error
        if exc is None or job.cancel.is_set() or time.monotonic() >= job.deadline:  # out of time
            self._busy(
                f"request took longer than this server's limit of {self.server.limits.request_timeout_s:g} s"
            )
        elif isinstance(exc, AuditorError):
            status = 400 if exc.exit_code == 2 else 503
            self._send(status, {"error": str(exc)})
        else:  # one bad generation must not take the server down
            self._send(500, {"error": f"generation failed ({type(exc).__name__})"})


def start_server(
    generator,
    host: str = "127.0.0.1",
    port: int = 0,
    defaults: GenerationSettings | None = None,
    log=None,
    limits: ServeLimits | None = None,
) -> tuple[SuspectServer, threading.Thread]:
    """Serve `generator` from a background thread; stop with `stop_server(server, thread)`."""
    server = SuspectServer((host, port), generator, defaults=defaults, log=log, limits=limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server, thread


def stop_server(server: SuspectServer, thread: threading.Thread, timeout: float = 10.0) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout)
