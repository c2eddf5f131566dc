"""HTTP suspects over real loopback sockets: `t2i-audit serve` as a black box, and a flaky server.

Every server here binds 127.0.0.1 on a free port, runs in a daemon thread, and is shut down
by its fixture; every client request has a timeout and a bounded number of retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from auditor.backends import HttpGenerator, HttpOptions
from auditor.config import GenerationSettings
from auditor.errors import BadInputError, TransientError
from auditor.images import encode_png
from t2i_audit import main

SETTINGS = GenerationSettings(steps=2, height=32, width=32)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connecting is refused


def _write_job(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_batch(job: Path, out: Path, *extra: str, capsys=None) -> tuple[int, dict | None]:
    rc = main(["--format", "json", "batch", str(job), "--out", str(out), *extra])
    summary = None
    if capsys is not None:
        text = capsys.readouterr().out
        summary = json.loads(text) if text.strip() else None
    return rc, summary


# ---------------------------------------------------------------- t2i-audit serve


class _Recording:
    """Wraps a Generator and records every (prompt, seed) the server was asked for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    def describe(self):
        return self.inner.describe()

    def generate(self, prompts, seeds, settings):
        self.calls.extend(zip(prompts, (int(s) for s in seeds), strict=True))
        return self.inner.generate(prompts, seeds, settings)


@pytest.fixture(scope="module")
def served(tiny_pipeline):
    from auditor.backends import TorchGenerator
    from auditor.serve import start_server, stop_server

    recorder = _Recording(TorchGenerator(tiny_pipeline, device="cpu", batch_size=1))
    server, thread = start_server(recorder, host="127.0.0.1", port=0)
    try:
        yield server, recorder
    finally:
        stop_server(server, thread)
    assert not thread.is_alive()


def test_served_suspect_audits_like_the_folder(served, tiny_pipeline, keys_dir, tmp_path, capsys):
    server, recorder = served
    recorder.calls.clear()
    job = _write_job(
        tmp_path / "job.yaml",
        f"""
keys: {keys_dir}
allow_inconclusive: true
thresholds: {{batch_size: 1, seeds_per_key: 1}}
generation: {{steps: 2}}
suspects:
  - name: folder
    model: {tiny_pipeline}
  - name: web
    model: {server.url}
    http: {{decoys_per_key: 2, stealth_seed: 7, timeout_s: 60, retries: 1}}
""",
    )
    rc, summary = _run_batch(job, tmp_path / "out", capsys=capsys)
    assert rc == 0, summary
    assert [row["status"] for row in summary["suspects"]] == ["done", "done"]
    folder = json.loads((tmp_path / "out/reports/folder.json").read_text())
    web = json.loads((tmp_path / "out/reports/web.json").read_text())
    # Same model, same keys, same seeds: the black box gives the folder's distances exactly.
    assert [k["distances"] for k in web["results"]] == [k["distances"] for k in folder["results"]]
    assert [k["image_sha256s"] for k in web["results"]] == [k["image_sha256s"] for k in folder["results"]]
    backend = web["backend"]
    assert backend["backend"] == "http"
    assert backend["versions"]["queries"] == "9 (3 keys + 6 decoys)"
    assert backend["versions"]["endpoint"] == f"127.0.0.1:{server.server_address[1]}"
    assert web["suspect"]["kind"] == "http_endpoint"
    transcript = json.loads((tmp_path / "out/transcripts/web.json").read_text())
    assert web["suspect"]["digest"] == transcript["transcript_sha256"]
    # Stealth: 9 queries, keys interleaved with decoys, decoys never a key prompt, and only the
    # keys' own seeds (a decoy borrows one), so a seed does not tell a key from a decoy.
    assert len(recorder.calls) == 9
    key_prompts = {k["prompt"] for k in folder["results"]}
    roles = [p in key_prompts for p, _ in recorder.calls]
    assert sum(roles) == 3 and roles != [True] * 3 + [False] * 6
    assert {s for _, s in recorder.calls} <= {k["seeds"][0] for k in folder["results"]}
    assert [q["role"] == "key" for q in transcript["queries"]] == roles
    # Every returned PNG's sha256 is in the transcript, and the key ones are the report's.
    key_shas = [q["sha256"] for q in transcript["queries"] if q["role"] == "key"]
    assert sorted(key_shas) == sorted(k["image_sha256s"][0] for k in web["results"])


def test_served_generic_api_and_bad_requests(served):
    server, _ = served
    a1111 = HttpGenerator(server.url, HttpOptions(decoys_per_key=0, timeout_s=60))
    generic = HttpGenerator(
        server.url + "/generate", HttpOptions(api="generic", decoys_per_key=0, timeout_s=60)
    )
    settings = GenerationSettings(steps=2, height=32, width=32, guidance_scale=3.0)
    a = a1111.generate(["a red circle"], [11], settings)
    b = generic.generate(["a red circle"], [11], settings)
    assert a.shape == (1, 32, 32, 3) and np.array_equal(a, b)
    # A request the server refuses (4xx) is not retried and fails as bad input.
    strict = HttpGenerator(
        server.url, HttpOptions(decoys_per_key=0, sampler_name="No Such Sampler", retries=3)
    )
    with pytest.raises(BadInputError, match="HTTP 400"):
        strict.generate(["a red circle"], [11], settings)
    assert strict.requests == 1


def test_serve_command_answers_and_stops_on_sigterm(tiny_pipeline):
    """The real `t2i-audit serve` process: answers on loopback, exits 0 on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    port = _closed_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "t2i_audit",
        "--threads",
        "1",
        "serve",
        str(tiny_pipeline),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # generous limits: on a loaded 2-core box importing torch and loading the pipeline alone has
    # taken over a minute, and a test that fails on a slow start measures the box, not the server
    try:
        deadline, ready = time.monotonic() + 240, False
        while not ready and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.load(r) == {"status": "ok"}
                ready = True
            except OSError:
                time.sleep(0.2)
        assert ready, "the server did not answer /health within 240 s"
        gen = HttpGenerator(
            f"http://127.0.0.1:{port}", HttpOptions(decoys_per_key=0, timeout_s=120, retries=0)
        )
        assert gen.generate(["a blue square"], [3], SETTINGS).shape == (1, 32, 32, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()


# ---------------------------------------------------------------- a flaky server


def _png(prompt: str, seed: int, width: int, height: int) -> bytes:
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return encode_png(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


class _FlakyHandler(BaseHTTPRequestHandler):
    """POST /MODE/sdapi/v1/txt2img misbehaves according to MODE and a per-mode call counter."""

    server: _FlakyServer

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, obj: object) -> None:
        self._raw(status, json.dumps(obj).encode())

    def _raw(self, status: int, data: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        mode = self.path.strip("/").split("/")[0]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls[mode] = n = self.server.calls.get(mode, 0) + 1
            self.server.headers_seen.append(dict(self.headers))
        w, h = body["width"], body["height"]
        png = _png(body["prompt"], body["seed"], w, h)
        good = {"images": [base64.b64encode(png).decode()]}

        def serve_good() -> None:
            with self.server.lock:
                self.server.good.add(hashlib.sha256(png).hexdigest())
            self._json(200, good)

        if mode == "ok":
            serve_good()
        elif mode == "auth":
            if self.headers.get("X-Api-Key") != "s3cret-token":
                self._json(401, {"error": "unauthorized"})
            else:
                serve_good()
        elif mode == "drop":  # every other call: close the connection without an answer
            if n % 2:
                self.close_connection = True
                return
            serve_good()
        elif mode == "slow":  # every other call: answer after the client's timeout
            if n % 2:
                time.sleep(0.8)
            serve_good()
        elif mode == "err500":  # every third call fails
            if n % 3 == 0:
                self._json(500, {"error": "internal"})
            else:
                serve_good()
        elif mode == "flicker":  # every other call: a malformed body
            if n % 2:
                self._raw(200, b'{"images": ["not base64 at all!!"')
            else:
                serve_good()
        elif mode == "big":
            self._raw(200, b"{" + b" " * 1000, length=50_000_000)
        elif mode == "bigstream":  # no Content-Length, more bytes than allowed
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b" " * 8192)
        elif mode == "badjson":
            self._raw(200, b"{this is not json")
        elif mode == "badb64":
            self._json(200, {"images": ["%%% not base64 %%%"]})
        elif mode == "badpng":
            junk = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20
            self._json(200, {"images": [base64.b64encode(junk).decode()]})
        elif mode == "wrongsize":
            self._json(
                200, {"images": [base64.b64encode(_png(body["prompt"], body["seed"], 16, 16)).decode()]}
            )
        elif mode == "err404":
            self._json(404, {"error": "no such model"})
        else:
            self._json(404, {"error": f"unknown mode {mode}"})


class _FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.good: set[str] = set()
        self.headers_seen: list[dict] = []

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up mid-answer (slow mode) is expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def flaky():
    server = _FlakyServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


RECOVERS = ("ok", "drop", "slow", "err500", "flicker")
FAILS = ("big", "bigstream", "badjson", "badb64", "badpng", "wrongsize", "err404")


def test_flaky_server_never_yields_a_report_from_a_bad_image(flaky, keys_dir, tmp_path, capsys):
    http = "{timeout_s: 0.4, retries: 2, backoff_s: 0.01, max_response_bytes: 65536, decoys_per_key: 1}"
    suspects = "".join(
        f"  - name: {mode}\n    model: {flaky.url}/{mode}/sdapi/v1/txt2img\n    http: {http}\n"
        for mode in RECOVERS + FAILS
    )
    suspects += f"  - name: refused\n    model: http://127.0.0.1:{_closed_port()}\n    http: {http}\n"
    job = _write_job(
        tmp_path / "job.yaml",
        f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\nthresholds: {{seeds_per_key: 1}}\nsuspects:\n{suspects}",
    )
    start = time.monotonic()
    rc, summary = _run_batch(job, tmp_path / "out", capsys=capsys)
    assert time.monotonic() - start < 60
    assert rc == 75  # the refused connection is transient; everything else was decided
    status = {row["name"]: row for row in summary["suspects"]}
    for mode in RECOVERS:
        assert status[mode]["status"] == "done", status[mode]
        report = json.loads((tmp_path / f"out/reports/{mode}.json").read_text())
        for key in report["results"]:
            assert set(key["image_sha256s"]) <= flaky.good  # only images the server meant to serve
        transcript = json.loads((tmp_path / f"out/transcripts/{mode}.json").read_text())
        assert {q["sha256"] for q in transcript["queries"]} <= flaky.good
        assert len(transcript["queries"]) == 6
        # 6 queries; every misbehaving mode really failed some attempts and was retried.
        assert flaky.calls[mode] == 6 if mode == "ok" else flaky.calls[mode] > 6, (mode, flaky.calls[mode])
    for mode in FAILS:
        assert status[mode]["status"] == "failed" and status[mode]["exit_code"] == 2, status[mode]
        assert not (tmp_path / f"out/reports/{mode}.json").exists()
        error = json.loads((tmp_path / f"out/errors/{mode}.json").read_text())
        assert "\n" not in error["message"] and mode in error["message"]
    assert status["refused"]["exit_code"] == 75 and "connection refused" in status["refused"]["error"]
    assert flaky.calls["err404"] == 1  # a 4xx is never retried
    assert flaky.calls["badjson"] == 3  # malformed answers are retried, boundedly (1 + retries)
    assert "HTTP 404" in status["err404"]["error"]
    assert "max_response_bytes" in status["big"]["error"]
    assert "16x16" in status["wrongsize"]["error"]


def test_auth_header_from_env_is_sent_but_never_written(flaky, keys_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_TEST_TOKEN", "s3cret-token")
    job = _write_job(
        tmp_path / "job.yaml",
        f"""
keys: {keys_dir}
allow_inconclusive: true
generation: {{steps: 2}}
thresholds: {{seeds_per_key: 1}}
suspects:
  - name: auth
    model: {flaky.url}/auth/sdapi/v1/txt2img
    http: {{auth_env: T2I_TEST_TOKEN, auth_header: X-Api-Key, decoys_per_key: 0, retries: 0}}
  - name: noauth
    model: {flaky.url}/auth/sdapi/v1/txt2img
    http: {{decoys_per_key: 0, retries: 0}}
  - name: unset
    model: {flaky.url}/auth/sdapi/v1/txt2img
    http: {{auth_env: T2I_NOT_SET_ANYWHERE, decoys_per_key: 0}}
""",
    )
    rc, summary = _run_batch(job, tmp_path / "out", capsys=capsys)
    assert rc == 2
    status = {row["name"]: row for row in summary["suspects"]}
    assert status["auth"]["status"] == "done"
    assert status["noauth"]["status"] == "failed" and "HTTP 401" in status["noauth"]["error"]
    assert "T2I_NOT_SET_ANYWHERE" in status["unset"]["error"]
    assert any(h.get("X-Api-Key") == "s3cret-token" for h in flaky.headers_seen)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert "s3cret-token" not in path.read_text(), path


def test_rate_limit_budget_and_url_credentials(flaky):
    gen = HttpGenerator(f"{flaky.url}/ok", HttpOptions(rate_limit=10, decoys_per_key=1, stealth_seed=1))
    start = time.monotonic()
    gen.generate(["a", "b", "c"], [5, 5, 5], SETTINGS)
    assert time.monotonic() - start >= 0.45  # 6 requests, starts spaced by 0.1 s
    assert gen.describe().versions["queries"] == "6 (3 keys + 3 decoys)"
    # A budget that cannot cover the audit is refused before any request.
    tight = HttpGenerator(f"{flaky.url}/ok", HttpOptions(max_queries=5, decoys_per_key=1))
    before = flaky.calls.get("ok", 0)
    with pytest.raises(BadInputError, match="max_queries = 5 cannot cover"):
        tight.generate(["a", "b", "c"], [5, 5, 5], SETTINGS)
    assert flaky.calls.get("ok", 0) == before
    # Retries spend the budget too: running out midway is bad input, not an endless retry.
    spent = HttpGenerator(f"{flaky.url}/flicker", HttpOptions(max_queries=4, decoys_per_key=0, backoff_s=0))
    with pytest.raises(BadInputError, match="exhausted"):
        spent.generate(["a", "b", "c"], [5, 5, 5], SETTINGS)
    assert spent.requests == 4
    with pytest.raises(BadInputError, match="credentials in the URL"):
        HttpGenerator(f"http://user:pw@127.0.0.1:{flaky.server_address[1]}/")
    with pytest.raises(TransientError, match="connection refused"):
        HttpGenerator(f"http://127.0.0.1:{_closed_port()}", HttpOptions(retries=1, backoff_s=0)).generate(
            ["a"], [1], SETTINGS
        )
