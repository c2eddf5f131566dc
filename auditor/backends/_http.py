"""A black-box suspect behind an HTTP API: AUTOMATIC1111's txt2img, a minimal JSON one, or ComfyUI.

The auditor can only send prompts and read back PNGs, so this is where everything a hostile
or flaky endpoint can do is bounded, whichever API it speaks (the API is a dialect object,
`_dialects.DIALECTS`: its requests, how its replies parse, the settings it can carry; the
checks every reply passes are `_replies`'):

- **time**: one wall-clock deadline per request, `timeout_s`, covering name resolution,
  connect, TLS, sending, the status line, the headers and the body together: a watchdog
  shuts the socket down when it passes (`auditor.deadline`), so no reply pattern (a hang,
  a drip of one byte a second) can hold a request longer; it fails as a timeout;
- **retries**: connection errors, timeouts, HTTP 5xx and 429 and malformed answers are
  retried up to `retries` times with exponential backoff; any other 4xx is not (the request
  itself is wrong, so repeating it cannot help);
- **rate**: at most `rate_limit` requests per second (request starts are spaced);
- **budget**: at most `max_queries` HTTP requests in all (retries included; a dialect whose
  query takes several requests, ComfyUI's, counts each). An audit that cannot fit is refused
  before its first request, and running out midway is a
  `BadInputError` (exit 2): a rerun would spend the same budget the same way, so raise the
  budget instead of retrying the job;
- **size**: a body over `max_response_bytes` is refused without reading it whole, a body of
  more than `MAX_REPLY_VALUES` JSON values is refused before it is parsed (a reply of
  millions of tiny objects would take gigabytes as Python objects), and a PNG whose header
  declares any size other than the requested one is refused before its pixels are decoded
  (no decompression bombs);
- **classification**: every failure of an attempt is either *network* (refused, reset,
  timed out, truncated before its Content-Length: a later run may not see it, so running
  out of retries is a TransientError, exit 75) or *malformed* (not HTTP, not JSON, too deep,
  numbers too long, wrong types, not a PNG, wrong size: a BadInputError, exit 2); nothing a
  server sends escapes as another exception.

Stealth: the key prompts of each `generate` call are sent interleaved with decoy prompts
(from a decoy list, or words of the key prompts recombined) in a seeded random order, with
the same seeds the keys use, so the endpoint cannot tell which queries are keys. Decoys are
not scored; `describe()` reports the query count.

The auth header's value comes from an environment variable named in the options, must be
printable ASCII (a control character, such as the trailing newline of a Kubernetes Secret
made from a file, is refused with a line that does not show the value), and is registered
with `auditor.errors.register_secret`, so it is scrubbed from every error message and
record. Every returned PNG's sha256 is kept
in a transcript (`transcript()`), whose digest pins the endpoint's answers in a report.
"""

from __future__ import annotations

import http.client
import os
import random
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

import numpy as np

from auditor.backends._base import BackendInfo, check_pairs
from auditor.backends._dialects import dialect_of
from auditor.backends._http_options import HttpOptions
from auditor.backends._replies import Retryable as _Retryable
from auditor.backends._replies import decode_png
from auditor.config import GenerationSettings
from auditor.deadline import Watchdog
from auditor.errors import BadInputError, TransientError, register_secret
from auditor.fileio import canonical_json, sha256_bytes

TRANSCRIPT_SCHEME = "t2i-auditor-http-transcript-v1"
T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """One answered query of the transcript."""

    index: int
    role: Literal["key", "decoy"]
    prompt: str
    seed: int
    sha256: str  # of the PNG bytes exactly as returned
    attempts: int


def redact_url(url: str) -> str:
    """scheme://host:port only: no credentials, path or query string (they may hold tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port: int | str = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # an unparsable URL: name none of it
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def check_secret(value: str, variable: str) -> str:
    """`value` if it can be an HTTP header value (printable ASCII), else one line that never shows it."""
    bad = next((i for i, char in enumerate(value) if not " " <= char <= "~"), None)
    if bad is None:
        return value
    char = value[bad]
    if bad >= len(value.rstrip("\r\n")):
        what = "ends in a newline (a Kubernetes Secret or file read with its line end?); strip it"
    elif ord(char) < 32 or ord(char) == 127:
        what = f"holds a control character (code {ord(char)}) at position {bad + 1}"
    else:
        what = f"holds a non-ASCII character at position {bad + 1}"
    raise BadInputError(
        f"http.auth_env: environment variable {variable} {what}; an HTTP header value must be printable "
        "ASCII (the value is not shown)"
    )


def _check_url(url: str) -> None:
    """Refuse what http.client would refuse mid-request (spaces, control or non-ASCII characters)."""
    bad = next((char for char in url if not "!" <= char <= "~"), None)
    if bad is not None:
        raise BadInputError(
            f"{redact_url(url)}: the URL holds a space, control or non-ASCII character; percent-encode it"
        )


class HttpGenerator:
    """A suspect model that is only reachable through an HTTP image-generation API."""

    def __init__(self, url: str, options: HttpOptions | None = None, name: str | None = None) -> None:
        self.options = options or HttpOptions()
        _check_url(url)
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:
            raise BadInputError(f"{redact_url(url)}: not a valid URL") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise BadInputError(f"{redact_url(url)}: expected an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise BadInputError(
                f"{redact_url(url)}: credentials in the URL are not accepted (they would end up in logs); "
                "put the auth header value in an environment variable and name it in http.auth_env"
            )
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BadInputError(f"{redact_url(url)}: invalid port in the URL") from None
        self.scheme = parts.scheme
        self.host = hostname
        self.dialect = dialect_of(self.options)
        path = parts.path if parts.path not in ("", "/") else self.dialect.default_path
        self.path = path + (f"?{parts.query}" if parts.query else "")
        self._url_path, self._url_query = path.rstrip("/"), parts.query
        self.endpoint = redact_url(url)
        self.name = name or self.endpoint  # errors name the endpoint, never the path or query
        self._auth: tuple[str, str] | None = None
        if self.options.auth_env:
            value = os.environ.get(self.options.auth_env)
            if not value:
                raise BadInputError(
                    f"http.auth_env: environment variable {self.options.auth_env} is not set or empty "
                    "(expected the value of the auth header)"
                )
            register_secret(value)  # before the check: whatever happens next never shows it
            self._auth = (self.options.auth_header, check_secret(value, self.options.auth_env))
        self._context = self.dialect.prepare(self.options)  # a template that does not load: refused now
        seed = self.options.stealth_seed if self.options.stealth_seed is not None else secrets.randbits(63)
        self.stealth_seed = seed
        self._rng = random.Random(seed)  # decoys and order only: the plan depends on the seed alone
        self._jitter = random.Random()
        self._transcript: list[Query] = []
        self.requests = 0  # HTTP requests sent, retries included
        self.failed_requests = 0
        self._last_start: float | None = None
        self.progress = None  # optional callable(queries answered so far), e.g. a progress bar

    # ------------------------------------------------------------ Generator protocol

    def describe(self) -> BackendInfo:
        keys = sum(q.role == "key" for q in self._transcript)
        decoys = len(self._transcript) - keys
        return BackendInfo(
            backend="http",
            device=f"remote {self.host}:{self.port}",
            dtype="unknown",
            versions={
                "api": self.options.api,
                "endpoint": f"{self.host}:{self.port}",
                "queries": f"{keys + decoys} ({keys} keys + {decoys} decoys)",
                "requests": f"{self.requests} ({self.failed_requests} failed and retried or refused)",
                "transcript_sha256": self.transcript_digest(),
                **self.dialect.record(self._context),
            },
            note="black-box HTTP suspect: key queries interleaved with decoys in a seeded random order",
        )

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        check_pairs(prompts, seeds)
        if settings.height is None or settings.width is None:
            raise BadInputError(
                f"{self.name}: an HTTP suspect needs explicit generation height and width (the keys' size)"
            )
        self.dialect.check_settings(settings, self._context, self.name)
        plan = self._plan(list(prompts), [int(s) for s in seeds])
        budget, each = self.options.max_queries, self.dialect.requests_per_query
        if budget is not None and self.requests + len(plan) * each > budget:
            per_query = f", at least {each} requests each" if each > 1 else ""
            raise BadInputError(
                f"{self.name}: query budget http.max_queries = {budget} cannot cover this audit "
                f"({self.requests} requests sent, {len(plan)} more queries needed{per_query} with "
                f"{self.options.decoys_per_key} decoys per key); raise it or lower http.decoys_per_key"
            )
        out = np.zeros((len(prompts), settings.height, settings.width, 3), dtype=np.uint8)
        for role, slot, prompt, seed in plan:
            image, digest, attempts = self._query(prompt, seed, settings)
            self._transcript.append(
                Query(len(self._transcript), role, prompt, seed, digest, attempts)  # type: ignore[arg-type]
            )
            if role == "key":
                out[slot] = image
            if self.progress is not None:
                self.progress(len(self._transcript))
        return out

    # ------------------------------------------------------------ transcript (_base.Transcribed)

    def transcript(self) -> list[Query]:
        return list(self._transcript)

    def queries_per_image(self) -> int:
        return 1 + self.options.decoys_per_key

    def transcript_document(self, name: str) -> dict[str, Any]:
        """Every query this suspect was sent and the sha256 of every PNG it returned."""
        return {
            "suspect": name,
            "endpoint": self.endpoint,
            "api": self.options.api,
            **self.dialect.record(self._context),
            "stealth_seed": self.stealth_seed,
            "transcript_sha256": self.transcript_digest(),
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "queries": [q.__dict__ for q in self._transcript],
        }

    def transcript_digest(self) -> str:
        """sha256 over every query (in order) and the sha256 of the PNG it got back."""
        rows = [[q.role, q.prompt, q.seed, q.sha256] for q in self._transcript]
        document = {
            "scheme": TRANSCRIPT_SCHEME,
            "endpoint": self.endpoint,
            "api": self.options.api,
            "queries": rows,
            **self.dialect.record(self._context),  # what else decides the answers (a ComfyUI template)
        }
        return sha256_bytes(canonical_json(document))

    # ------------------------------------------------------------ stealth

    def _plan(self, prompts: list[str], seeds: list[int]) -> list[tuple[str, int, str, int]]:
        """(role, slot, prompt, seed) in the order sent: keys and decoys shuffled together."""
        items = [("key", i, p, s) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
        n_decoys = self.options.decoys_per_key * len(prompts)
        if n_decoys and prompts:
            keyset = set(prompts)
            words = [w for p in prompts for w in p.split()]
            for _ in range(n_decoys):
                prompt = self._decoy(prompts, words, keyset)
                items.append(("decoy", -1, prompt, self._rng.choice(seeds)))
        self._rng.shuffle(items)
        return items

    def _decoy(self, prompts: list[str], words: list[str], keys: set[str]) -> str:
        if self.options.decoy_prompts:
            return self._rng.choice(self.options.decoy_prompts)
        candidate = ""
        for _ in range(32):  # bounded: tiny vocabularies may only recombine into keys
            length = len(self._rng.choice(prompts).split())
            candidate = " ".join(self._rng.choice(words) for _ in range(max(1, length)))
            if candidate not in keys:
                return candidate
        return candidate

    # ------------------------------------------------------------ one query

    def _query(self, prompt: str, seed: int, settings: GenerationSettings) -> tuple[np.ndarray, str, int]:
        """One query through the dialect: (pixels, sha256 of the PNG, requests it took)."""
        before = self.requests
        png, image = self.dialect.fetch(self, self._context, prompt, seed, settings)
        return image, sha256_bytes(png), self.requests - before

    def url_path(self, suffix: str, params: Mapping[str, str] | None = None) -> str:
        """The URL's path joined with `suffix`, the URL's query string and `params` after it."""
        query = "&".join(q for q in (self._url_query, urlencode(params or {})) if q)
        return self._url_path + suffix + (f"?{query}" if query else "")

    def call(
        self,
        parse: Callable[[bytes], T],
        body: bytes | None = None,
        *,
        method: str = "POST",
        path: str | None = None,
    ) -> T:
        """One request (POST `body` to the URL unless `method` and `path` say otherwise) and its
        reply parsed: retried, paced and budgeted (see the module docstring)."""
        opts = self.options
        last: _Retryable | None = None
        for attempt in range(opts.retries + 1):
            if attempt:
                delay = min(opts.backoff_max_s, opts.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + self._jitter.random() / 2))  # jittered exponential backoff
            if opts.max_queries is not None and self.requests >= opts.max_queries:
                raise BadInputError(
                    f"{self.name}: query budget http.max_queries = {opts.max_queries} exhausted "
                    f"after {self.requests} requests ({self.failed_requests} failed); raise it to finish this audit"
                )
            self._pace()
            self.requests += 1
            try:
                if method == "POST" and path is None:
                    status, data = self._post(body or b"")
                else:
                    status, data = self._send(method, path or self.path, body)
                if status == 429 or 500 <= status <= 599:
                    raise _Retryable(f"HTTP {status}", network=True)
                if 300 <= status <= 399:
                    raise BadInputError(
                        f"{self.endpoint} answered HTTP {status}, a redirect (not followed: give the "
                        "final URL of the API)"
                    )
                if status != 200:
                    raise BadInputError(
                        f"{self.endpoint} answered HTTP {status} (not retried: the request was "
                        f"refused; check the URL, http.api and the auth header)"
                    )
                return parse(data)
            except _Retryable as exc:
                self.failed_requests += 1
                last = exc
            except BadInputError:
                self.failed_requests += 1
                raise
        assert last is not None
        message = (
            f"{self.endpoint} failed {opts.retries + 1} attempts for one query "
            f"(last: {last}); see http.timeout_s, http.retries"
        )
        raise TransientError(message) if last.network else BadInputError(message)

    def _pace(self) -> None:
        if self.options.rate_limit is None:
            return
        now = time.monotonic()
        if self._last_start is not None:
            wait = self._last_start + 1.0 / self.options.rate_limit - now
            if wait > 0:
                time.sleep(wait)
                now = time.monotonic()
        self._last_start = now

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST `body` to the URL: a dialect's one request per query (A1111's, the generic API's)."""
        return self._send("POST", self.path, body)

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request under one wall-clock deadline (see the module docstring); (status, body)."""
        opts = self.options
        timed_out = _Retryable(f"timed out after {opts.timeout_s:g} s", network=True)
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
        if body is None:  # a GET: a JSON reply (a history) or an image (a ComfyUI /view)
            headers = {"Accept": "application/json, image/png", "Connection": "close"}
        if self._auth:
            headers[self._auth[0]] = self._auth[1]
        with Watchdog(time.monotonic() + opts.timeout_s) as watchdog:

            def left() -> float:
                if watchdog.expired():
                    raise timed_out
                return watchdog.remaining()

            conn = self._connection(watchdog)
            try:
                conn.request(method, path, body=body, headers=headers)
                if conn.sock is not None:
                    conn.sock.settimeout(left())
                response = conn.getresponse()
                length = (response.getheader("Content-Length") or "").strip()
                if length.isdigit() and (len(length) > 15 or int(length) > opts.max_response_bytes):
                    raise _Retryable(
                        f"response of {length[:20]} bytes exceeds http.max_response_bytes = "
                        f"{opts.max_response_bytes}",
                        network=False,
                    )
                data = bytearray()
                while True:
                    if conn.sock is not None:
                        conn.sock.settimeout(left())
                    chunk = response.read(min(1 << 16, opts.max_response_bytes + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > opts.max_response_bytes:
                        raise _Retryable(
                            f"response exceeds http.max_response_bytes = {opts.max_response_bytes}",
                            network=False,
                        )
                if watchdog.expired():  # the watchdog's shutdown reads as an early end of data
                    raise timed_out
                if response.length:  # http.client returns what came when the peer closes early
                    raise _Retryable(
                        f"reply truncated: {len(data)} bytes, {response.length} fewer than its Content-Length",
                        network=True,
                    )
                return response.status, bytes(data)
            except _Retryable:
                raise
            except Exception as exc:  # whatever a hostile peer makes http.client or ssl raise
                if watchdog.expired():
                    raise timed_out from None
                raise _classify(exc) from None
            finally:
                conn.close()

    def _connection(self, watchdog: Watchdog) -> http.client.HTTPConnection:
        """An HTTP(S) connection whose sockets the watchdog shuts down at the deadline."""
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.options.timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.options.timeout_s)
        conn._create_connection = watchdog.create_connection  # type: ignore[attr-defined]
        return conn

    _decode = staticmethod(decode_png)  # a returned PNG's pixels, checked (`_replies.decode_png`)


def _classify(exc: BaseException) -> _Retryable:
    """A failed attempt as network (a later run may not see it) or malformed (the peer's answer)."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return _Retryable("timed out", network=True)
    if isinstance(exc, ConnectionRefusedError):
        return _Retryable("connection refused", network=True)
    if isinstance(exc, http.client.IncompleteRead):
        return _Retryable("reply truncated before its end", network=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _Retryable("TLS certificate not trusted", network=False)
    if isinstance(exc, OSError):  # resets, unreachable hosts, TLS failures; RemoteDisconnected too
        reason = name + (f": {exc.strerror}" if exc.strerror else "")
        return _Retryable(f"connection failed ({reason})", network=True)
    if isinstance(exc, http.client.HTTPException):  # not HTTP: bad status line, header flood
        return _Retryable(f"malformed HTTP reply ({name})", network=False)
    return _Retryable(f"unreadable reply ({name})", network=False)
