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
        f"keys: {keys_dir}\ngeneration: {{steps: 2}}\nsuspects:\n"
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
