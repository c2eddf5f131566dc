"""The hostile-input suite: what an adversary can send or hand the auditor, swept and counted.

Loopback only, bounded in count and time (well under a minute on two shared cores):

- **fuzz**: every reply behaviour of `hostile_server.BEHAVIOURS` (drips, hangs, resets,
  bombs, oversized, deep JSON, huge integers, wrong sizes, JPEG, redirects, 5xx...) against
  the HTTP suspect client: each ends as a report-free, classified failure (exit 75 or 2)
  or a correct image, never another exception, and no request outlives its deadline;
- **secrets**: an auth token with a trailing newline, and a token quoted by an exception,
  never reach errors/, summary.json, stdout or stderr;
- **tamper**: every byte of a small signed envelope changed, none verifies with changed content;
- **kill -9**: a small signed batch killed at random moments and rerun: no report lost or
  corrupted, every report present verifies;
- **bad files**: every file format the auditor reads, broken in every way the loader knows:
  one-line errors with exit 2, never a traceback.

`T2I_SOAK=1` runs the longer soak: more repetitions, more kills, more mutations. The counts
of the last run are printed with `-s` and recorded in docs/hostile-inputs.md.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hostile_server import BEHAVIOURS, HostileServer

from auditor.backends import HttpGenerator, HttpOptions
from auditor.backends import _http as http_module
from auditor.config import GenerationSettings
from auditor.errors import AuditorError, BadInputError, TransientError

SOAK = os.environ.get("T2I_SOAK") == "1"
SETTINGS = GenerationSettings(steps=2, height=32, width=32)
TIMEOUT_S = 0.5
SLACK_S = 0.25  # the longest a request may outlive timeout_s: thread wake-up and socket close


@pytest.fixture()
def hostile():
    with HostileServer() as server:
        yield server


@pytest.fixture()
def timed_posts(monkeypatch):
    """Every HTTP request's wall time, whatever happens in it."""
    durations: list[float] = []
    original = http_module.HttpGenerator._post

    def timed(self, body):
        start = time.monotonic()
        try:
            return original(self, body)
        finally:
            durations.append(time.monotonic() - start)

    monkeypatch.setattr(http_module.HttpGenerator, "_post", timed)
    return durations


# ---------------------------------------------------------------- fuzz


def _query(url: str, **options) -> tuple[str, str, float]:
    """(outcome, message, seconds) of one key query: ok, transient, bad or crash."""
    values = {
        "timeout_s": TIMEOUT_S,
        "retries": 1,
        "backoff_s": 0,
        "decoys_per_key": 0,
        "max_response_bytes": 1 << 20,
        **options,
    }
    gen = HttpGenerator(url, HttpOptions(**values))
    start = time.monotonic()
    try:
        images = gen.generate(["a red circle"], [3], SETTINGS)
        assert images.shape == (1, 32, 32, 3)
        outcome, message = "ok", ""
    except TransientError as exc:
        outcome, message = "transient", str(exc)
    except BadInputError as exc:
        outcome, message = "bad", str(exc)
    except AuditorError as exc:  # pragma: no cover - no other class is expected
        outcome, message = f"exit {exc.exit_code}", str(exc)
    except Exception as exc:  # noqa: BLE001 - a crash is what is being counted
        outcome, message = "crash", f"{type(exc).__name__}: {exc}"[:300]
    return outcome, message, time.monotonic() - start


def test_fuzzed_replies_are_classified_bounded_and_never_crash(hostile, timed_posts):
    rounds = 5 if SOAK else 1
    modes = sorted(BEHAVIOURS)
    wrong, crashes, slow = [], [], []
    for _ in range(rounds):
        random.shuffle(modes)
        for mode in modes:
            outcome, message, seconds = _query(f"{hostile.url}/{mode}/sdapi/v1/txt2img")
            if outcome == "crash":
                crashes.append((mode, message))
            elif outcome != BEHAVIOURS[mode] or "\n" in message:
                wrong.append((mode, outcome, message))
            if seconds > 2 * (TIMEOUT_S + SLACK_S):  # two attempts at most, each within its deadline
                slow.append((mode, round(seconds, 2)))
    longest = max(timed_posts)
    print(
        f"\nfuzz: {len(timed_posts)} replies ({len(BEHAVIOURS)} behaviours x {rounds}), "
        f"{len(crashes)} crashes, {sum(d > TIMEOUT_S + SLACK_S for d in timed_posts)} hangs, "
        f"longest request {longest:.3f} s for timeout_s {TIMEOUT_S}"
    )
    assert crashes == []
    assert wrong == []
    assert slow == []
    assert longest <= TIMEOUT_S + SLACK_S
    # retried exactly as classified: network failures and malformed answers twice, 4xx once
    assert hostile.calls["err404"] == hostile.calls["redirect"] == rounds
    assert hostile.calls["err500"] == hostile.calls["deep_json"] == 2 * rounds


def test_a_drip_cannot_stretch_the_deadline(hostile, timed_posts):
    """One byte every 50 ms never trips a socket timeout; the wall-clock deadline still holds."""
    for mode in ("drip_headers", "drip_body"):
        outcome, message, seconds = _query(f"{hostile.url}/{mode}/x", timeout_s=1.0, retries=0)
        assert outcome == "transient" and "timed out after 1 s" in message, message
        assert 1.0 <= seconds <= 1.0 + SLACK_S, (mode, seconds)


def test_a_truncated_reply_is_transient_and_a_redirect_is_not_followed(hostile):
    outcome, message, _ = _query(f"{hostile.url}/truncated/x", retries=0)
    assert outcome == "transient" and "truncated" in message
    outcome, message, _ = _query(f"{hostile.url}/redirect/x")
    assert outcome == "bad" and "redirect" in message and "do-not-follow" not in message
    assert "ok" not in hostile.calls  # the Location was never fetched


def test_a_reply_of_millions_of_values_is_refused_before_parsing(hostile):
    import tracemalloc

    tracemalloc.start()
    try:
        outcome, message, _ = _query(f"{hostile.url}/many_values/x", retries=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome == "bad" and "values" in message
    assert peak < 12 << 20, peak  # a 0.9 MB reply; parsed, its objects would take 23 MB


def test_unusable_urls_are_bad_input_before_any_request():
    for url in (
        "http://127.0.0.1:1/a b",
        "http://127.0.0.1:1/a\x01b",
        "http://127.0.0.1:99999/",
        "http://[::1",
        "http://127.0.0.1:1/caf\u00e9",
    ):
        with pytest.raises(BadInputError) as info:
            HttpGenerator(url, HttpOptions(retries=0))
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- secrets

TOKEN = "tok-9f8e7d6c5b4a"


def _batch_with_token(tmp_path, keys_dir, url: str, capsys) -> tuple[int, str]:
    """A batch whose one suspect sends TOKEN (from T2I_HOSTILE_TOKEN); rc and everything it printed."""
    from t2i_audit import main

    job = tmp_path / "job.yaml"
    job.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\nsuspects:\n"
        f"  - name: web\n    model: {url}\n"
        "    http: {auth_env: T2I_HOSTILE_TOKEN, decoys_per_key: 0, retries: 0}\n"
    )
    rc = main(["--format", "json", "batch", str(job), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    rc_human = main(["batch", str(job), "--out", str(tmp_path / "out"), "--summarize"])
    captured = capsys.readouterr()
    return rc, printed + captured.out + captured.err + f"rc {rc_human}"


def _written(root) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_a_token_with_a_newline_is_refused_without_showing_it(
    hostile, keys_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("T2I_HOSTILE_TOKEN", TOKEN + "\n")
    rc, printed = _batch_with_token(tmp_path, keys_dir, f"{hostile.url}/ok/x", capsys)
    assert rc == 2  # bad input: a retry cannot fix it
    error = (tmp_path / "out/errors/web.json").read_text()
    assert "T2I_HOSTILE_TOKEN" in error and "newline" in error
    for text in (printed, _written(tmp_path / "out")):
        assert TOKEN not in text
    assert "ok" not in hostile.calls  # refused before any request


def test_a_token_quoted_by_an_exception_is_scrubbed_everywhere(
    hostile, keys_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("T2I_HOSTILE_TOKEN", TOKEN)

    def leaky(self, body):
        raise ValueError(f"Invalid header value b'{TOKEN}\\n'")

    monkeypatch.setattr(http_module.HttpGenerator, "_post", leaky)
    rc, printed = _batch_with_token(tmp_path, keys_dir, f"{hostile.url}/ok/x", capsys)
    assert rc == 75  # an unexpected exception: maybe a bug, maybe exhausted resources
    record = (tmp_path / "out/errors/web.json").read_text()
    assert "Invalid header value" in record and "[redacted]" in record
    for text in (printed, _written(tmp_path / "out")):
        assert TOKEN not in text


def test_secret_scrubbing_covers_escaped_spellings():
    from auditor.errors import BadInputError as Bad
    from auditor.errors import register_secret, scrub

    register_secret("p4ss'w\\rd")
    assert "p4ss" not in scrub("header b'p4ss\\'w\\\\rd' and \"p4ss'w\\\\rd\"")
    assert "p4ss" not in str(Bad("value p4ss'w\\rd refused"))


# ---------------------------------------------------------------- serve against hostile clients


class _SlowModel:
    """A stand-in model: `step_s` per denoising step, stops when asked, 32x32 natively."""

    def __init__(self, step_s: float = 0.02) -> None:
        import threading

        self.step_s = step_s
        self.steps_run = 0
        self.stopped = 0
        self.lock = threading.Lock()

    def native_size(self):
        return 32, 32

    def describe(self):  # pragma: no cover - not used by serve
        raise NotImplementedError

    def generate(self, prompts, seeds, settings, *, stop=None):
        import numpy as np

        from auditor.backends._diffusers import GenerationStopped

        for _ in range(settings.steps):
            if stop is not None and stop():
                with self.lock:
                    self.stopped += 1
                raise GenerationStopped("stopped")
            time.sleep(self.step_s)
            with self.lock:
                self.steps_run += 1
        size = (settings.height or 32, settings.width or 32)
        return np.zeros((len(prompts), *size, 3), dtype=np.uint8)


@pytest.fixture()
def serving():
    """start(model, **limits) -> a served model on loopback; every server stopped afterwards."""
    from auditor.serve import ServeLimits, start_server, stop_server

    started = []

    def start(model=None, **limits):
        server, thread = start_server(model or _SlowModel(), limits=ServeLimits(**limits))
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        stop_server(server, thread)


def _raw(server, data: bytes, timeout: float = 10.0) -> tuple[int | None, object]:
    """Send raw bytes, read the answer to the end: (status, parsed JSON body) or (None, reason)."""
    import json
    import socket

    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        try:
            sock.sendall(data)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError as exc:
            return None, type(exc).__name__
    if not reply:
        return None, "no answer"
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body[:100]


def _post(server, body: bytes | str, path: str = "/sdapi/v1/txt2img", headers: str = "", **kw):
    data = body.encode() if isinstance(body, str) else body
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if "Content-Length" not in headers:
        head += f"Content-Length: {len(data)}\r\n"
    return _raw(server, (head + headers + "\r\n").encode() + data, **kw)


_GOOD = '{"prompt": "a red circle", "seed": 3, "steps": 2, "width": 32, "height": 32}'
MALFORMED: dict[str, tuple[bytes | str, str]] = {
    "deep": ("[" * 5000 + "]" * 5000, ""),
    "5000 digits": ('{"prompt": "a", "seed": ' + "9" * 5000 + "}", ""),
    "float overflow": ('{"prompt": "a", "cfg_scale": 1e999}', ""),
    "NaN": ('{"prompt": "a", "cfg_scale": NaN}', ""),
    "duplicate keys": ('{"prompt": "a", "prompt": "b"}', ""),
    "not an object": ("[1, 2]", ""),
    "not UTF-8": (b'{"prompt": "\xff\xfe"}', ""),
    "not JSON": ("prompt=a", ""),
    "prompt not a string": ('{"prompt": 7}', ""),
    "empty prompt": ('{"prompt": "  "}', ""),
    "huge prompt": ('{"prompt": "' + "a" * 20_000 + '"}', ""),
    "seed a string": ('{"prompt": "a", "seed": "x"}', ""),
    "seed 2**63": ('{"prompt": "a", "seed": 9223372036854775808}', ""),
    "seed -2**70": ('{"prompt": "a", "seed": -1180591620717411303424}', ""),
    "seed -2": ('{"prompt": "a", "seed": -2}', ""),
    "seed true": ('{"prompt": "a", "seed": true}', ""),
    "seed 3.0": ('{"prompt": "a", "seed": 3.0}', ""),
    "steps a string": ('{"prompt": "a", "steps": "x"}', ""),
    "steps 0": ('{"prompt": "a", "steps": 0}', ""),
    "steps over budget": ('{"prompt": "a", "steps": 151}', ""),
    "width not a multiple of 8": ('{"prompt": "a", "width": 33, "height": 32}', ""),
    "4096 x 4096": ('{"prompt": "a", "width": 4096, "height": 4096}', ""),
    "64 x 64 over budget": ('{"prompt": "a", "width": 64, "height": 64}', ""),
    "unknown sampler": ('{"prompt": "a", "sampler_name": "Nope"}', ""),
    "batch_size 2": ('{"prompt": "a", "batch_size": 2}', ""),
    "no Content-Length": (_GOOD, "Transfer-Encoding: chunked\r\nContent-Length: \r\n"),
    "Content-Length of 5000 digits": (_GOOD, "Content-Length: " + "9" * 5000 + "\r\n"),
    "negative Content-Length": (_GOOD, "Content-Length: -5\r\n"),
    "Content-Length over 1 MiB": (_GOOD, "Content-Length: 2000000\r\n"),
}


def test_serve_answers_every_malformed_body_with_a_json_error(serving):
    server = serving()
    statuses = {}
    for name, (body, headers) in MALFORMED.items():
        status, answer = _post(server, body, headers=headers)
        statuses[name] = status
        assert status in (400, 411, 413), (name, status, answer)
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), (name, answer)
    status, answer = _raw(server, b"GARBAGE\r\n\r\n")
    assert status == 400 and "error" in answer
    status, answer = _raw(server, b"DELETE /sdapi/v1/txt2img HTTP/1.1\r\n\r\n")
    assert status == 501 and "error" in answer
    print(f"\nserve: {len(MALFORMED) + 2} malformed requests, all answered with a JSON error")
    # the server is unharmed, and real clients' extra fields are still accepted (A1111 compatibility)
    extra = (
        '{"prompt": "a", "seed": -1, "steps": 2, "width": 32, "height": 32, "styles": [], "subseed": -1, '
        '"enable_hr": false, "override_settings": {"CLIP_stop_at_last_layers": 1}, "send_images": true, '
        '"alwayson_scripts": {}, "sampler_name": "Euler a", "restore_faces": false}'
    )
    status, answer = _post(server, extra)
    assert status == 200 and len(answer["images"]) == 1, answer


def test_serve_budget_defaults_to_the_models_resolution(serving, tiny_pipeline):
    from auditor.backends import TorchGenerator

    model = TorchGenerator(tiny_pipeline, device="cpu", batch_size=1)
    server = serving(model, max_steps=1000)
    assert server.max_pixels == 32 * 32 == model.native_size()[0] * model.native_size()[1]
    status, answer = _post(server, '{"prompt": "a", "width": 4096, "height": 4096}')
    assert status == 400 and "budget" in answer["error"]
    # the model's scheduler is asked too: 1000 DDIM steps cannot run on it
    start = time.monotonic()
    status, answer = _post(server, '{"prompt": "a", "steps": 1000, "sampler_name": "DDIM"}')
    assert status == 400 and "steps 1000 with the ddim scheduler" in answer["error"]
    assert time.monotonic() - start < 5
    assert model.pipe is not None and server.served == 0


def test_serve_queue_full_answers_503_at_once(serving):
    import threading

    model = _SlowModel(step_s=0.05)
    server = serving(model, queue=1)
    slow = '{"prompt": "a", "steps": 30}'  # 1.5 s each
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(_post(server, slow))) for _ in range(2)]
    for thread in threads:  # one running, one waiting
        thread.start()
        time.sleep(0.2)
    start = time.monotonic()
    status, answer = _post(server, slow)
    assert status == 503 and "busy" in answer["error"]
    assert time.monotonic() - start < 1.0  # refused at once, not after the queue
    for thread in threads:
        thread.join(10)
    assert sorted(status for status, _ in answers) == [200, 200]


def test_serve_stops_a_request_at_its_time_limit(serving):
    model = _SlowModel(step_s=0.05)
    server = serving(model, request_timeout_s=0.5)
    start = time.monotonic()
    status, answer = _post(server, '{"prompt": "a", "steps": 150}')  # 7.5 s of steps
    assert status == 503 and "limit of 0.5 s" in answer["error"]
    assert time.monotonic() - start < 0.5 + 0.5
    deadline = time.monotonic() + 2
    while model.stopped == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert model.stopped == 1 and model.steps_run < 30  # stopped between two steps, not finished
    status, _ = _post(server, '{"prompt": "a", "steps": 2}')
    assert status == 200  # the worker is free again


def test_serve_stops_a_torch_generation_between_steps(serving, tiny_pipeline):
    from auditor.backends import TorchGenerator

    model = TorchGenerator(tiny_pipeline, device="cpu", batch_size=1)
    steps = []
    model.pipe.unet.register_forward_hook(lambda *_: steps.append(1))
    server = serving(model, request_timeout_s=0.5, max_steps=1000)
    status, answer = _post(server, '{"prompt": "a", "steps": 1000, "sampler_name": "Euler"}')  # ~7 s here
    assert status == 503 and "limit of 0.5 s" in answer["error"]
    time.sleep(0.3)
    ran = len(steps)
    time.sleep(0.5)
    assert len(steps) == ran < 1000  # stopped between two steps, long before its end
    status, answer = _post(server, '{"prompt": "a", "steps": 2, "sampler_name": "Euler"}')
    assert status == 200, answer  # and the model is free for the next request


def test_serve_slow_clients_cannot_hold_threads(serving):
    import socket

    server = serving(read_timeout_s=0.5, max_connections=2)
    drips = [socket.create_connection(server.server_address[:2], timeout=5) for _ in range(2)]
    try:
        for sock in drips:
            sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.1)
        start = time.monotonic()
        status, answer = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")  # no connection slot left
        assert status == 503 and "too many connections" in answer["error"]
        assert time.monotonic() - start < 0.5
        for sock in drips:  # each dripper is cut off at read_timeout_s, whatever it sends
            start = time.monotonic()
            while True:
                try:
                    sock.sendall(b"X-Drip: 1\r\n")
                    if not sock.recv(1, socket.MSG_DONTWAIT):
                        break
                except BlockingIOError:
                    time.sleep(0.05)
                    continue
                except OSError:
                    break
                if time.monotonic() - start > 3:
                    pytest.fail("a dripping client held its connection past read_timeout_s")
    finally:
        for sock in drips:
            sock.close()
    time.sleep(0.2)
    status, answer = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")
    assert status == 200 and answer == {"status": "ok"}


# ---------------------------------------------------------------- PNG bombs by bytes, not pixels


def _idat_bomb(width: int, height: int, inflated: int) -> bytes:
    """A valid-looking RGB PNG header for width x height whose IDAT inflates to `inflated` bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    idat = b"".join(packer.compress(zeros) for _ in range(inflated >> 20)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_png_whose_pixels_inflate_past_its_header_is_refused_cheaply():
    import tracemalloc

    from auditor.images import decode_png, encode_png, png_raw_size

    bomb = _idat_bomb(32, 32, 300 << 20)  # declares 32x32 RGB (3,104 bytes), inflates to 300 MB
    assert png_raw_size(bomb) == 32 * (1 + 32 * 3)
    tracemalloc.start()
    start = time.monotonic()
    with pytest.raises(http_module._Retryable, match="decompression bomb.*past the 3104 bytes"):
        http_module.HttpGenerator._decode(bomb, 32, 32)
    with pytest.raises(BadInputError, match="key.png: refused as a decompression bomb"):
        decode_png(bomb, "key.png", expected=(32, 32))
    seconds, peak = time.monotonic() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 8 << 20, (seconds, peak)  # nothing near 300 MB was inflated
    # an honest PNG, interlaced or not, still decodes
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert (http_module.HttpGenerator._decode(encode_png(pixels), 32, 32) == pixels).all()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", interlace=1)
    assert (decode_png(buffer.getvalue(), "i.png", expected=(32, 32)) == pixels).all()
