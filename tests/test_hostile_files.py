"""The hostile-input suite, part two: what an adversary can hand the auditor as files.

- **tamper**: every byte of a small signed envelope (tests/golden/envelope.json) changed four
  ways, and every third byte of a signed attribution report (every byte with T2I_SOAK=1):
  none verifies with changed content, and every refusal is a VerificationError (exit 1) or
  a BadInputError (exit 2), never another exception;
- **kill -9**: a small signed batch of HTTP suspects killed at random moments and rerun: no
  report lost, changed or corrupted, and every report present has an envelope that verifies
  to it;
- **bad files**: every format the auditor reads (keyset, report, envelope, bundle manifest,
  discriminator, shadow set, commitment, job YAML/JSON/TOML, safetensors header, scheduler
  config) broken in every way below, and put where the file should be (a folder, a FIFO, a
  device, a sparse giant): one-line errors, never a traceback.

The counts are printed (pytest -s) and recorded in docs/hostile-inputs.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from auditor.errors import AuditorError, BadInputError, VerificationError

SOAK = os.environ.get("T2I_SOAK") == "1"
GOLDEN = Path(__file__).parent / "golden"
PUBLIC = GOLDEN / "test-signing-key.pub"
PRIVATE = GOLDEN / "test-signing-key.pem"


def _classify(call: Callable[[], object]) -> tuple[str, object]:
    """("ok", value), ("bad", exc), ("invalid", exc) or ("crash", exc), with one-line messages checked."""
    try:
        return "ok", call()
    except VerificationError as exc:
        assert "\n" not in str(exc)
        return "invalid", exc
    except BadInputError as exc:
        assert "\n" not in str(exc)
        return "bad", exc
    except AuditorError as exc:  # pragma: no cover - no other class is expected
        return "crash", exc
    except Exception as exc:  # noqa: BLE001 - a traceback is what is being counted
        return "crash", exc


# ---------------------------------------------------------------- tamper


def _tampered(data: bytes, positions: range) -> Iterator[tuple[str, bytes]]:
    for i in positions:
        byte = data[i]
        yield f"{i}^01", data[:i] + bytes([byte ^ 0x01]) + data[i + 1 :]
        yield f"{i}^20", data[:i] + bytes([byte ^ 0x20]) + data[i + 1 :]
        yield f"{i}del", data[:i] + data[i + 1 :]
        yield f"{i}dup", data[:i] + bytes([byte]) + data[i:]


def _sweep_envelope(original: bytes, verify: Callable[[bytes], object], positions: range) -> Counter:
    expected = verify(original)
    counts: Counter = Counter()
    changed, crashes = [], []
    for label, data in _tampered(original, positions):
        outcome, value = _classify(lambda data=data: verify(data))
        counts[outcome] += 1
        if outcome == "ok" and value != expected:
            changed.append(label)
        elif outcome == "crash":
            crashes.append((label, repr(value)[:200]))
    counts["accepted with changed content"] = len(changed)
    assert changed == [] and crashes == []
    return counts


def test_no_tampered_golden_envelope_verifies_with_changed_content():
    from auditor.signing import load_verifier, verify_envelope

    verifier = load_verifier(PUBLIC)
    original = (GOLDEN / "envelope.json").read_bytes()
    counts = _sweep_envelope(
        original, lambda data: verify_envelope(data, verifier, predicate_type=None), range(len(original))
    )
    print(f"\ntamper (golden envelope, {len(original)} bytes): {dict(counts)}")
    assert sum(counts[k] for k in ("ok", "bad", "invalid")) == 4 * len(original)


def test_no_tampered_signed_report_verifies_with_changed_content(tmp_path):
    from test_evidence import make_keyset, make_report

    from auditor.evidence import verify_signed_report, write_signed_report

    keyset = make_keyset(tmp_path / "keys")
    regenerations = np.zeros((len(keyset.keys), 32, 32, 3), dtype=np.uint8)
    envelope = write_signed_report(make_report(keyset, regenerations), PRIVATE, tmp_path / "r.dsse.json")
    original = envelope.read_bytes()
    stride = 1 if SOAK else 3
    counts = _sweep_envelope(
        original, lambda data: verify_signed_report(data, PUBLIC), range(0, len(original), stride)
    )
    print(f"\ntamper (signed report, {len(original)} bytes, every {stride}): {dict(counts)}")


def test_a_tampered_envelope_never_verifies_through_the_cli(tmp_path, capsys):
    """The same, through `t2i-audit verify`: exit 1 or 2, one stderr line, a sample of positions."""
    from t2i_audit import main

    original = (GOLDEN / "envelope.json").read_bytes()
    rng = random.Random(13)
    codes: Counter = Counter()
    for label, data in rng.sample(list(_tampered(original, range(len(original)))), 40 if not SOAK else 400):
        path = tmp_path / "t.json"
        path.write_bytes(data)
        code = main(["verify", str(path), "--key", str(PUBLIC)])
        err = capsys.readouterr().err.strip().splitlines()
        codes[code] += 1
        assert code in (1, 2) and len(err) == 1, (label, code, err)


# ---------------------------------------------------------------- kill -9

_RUN_BATCH = """
import sys
from auditor.batch import BatchRunner, load_job, run_batch, write_summary
job = load_job(sys.argv[1])
run_batch(BatchRunner(job, sys.argv[2]))
write_summary(job, sys.argv[2])
"""


def _check_reports(out: Path, seen: dict[str, bytes]) -> tuple[int, int]:
    """Every report present parses and has an envelope verifying to it; none seen before is gone or
    changed. Returns (reports, orphaned envelopes)."""
    from auditor.evidence import verify_signed_report
    from auditor.report import load_report

    reports = sorted(p for p in (out / "reports").glob("*.json") if not p.name.endswith(".dsse.json"))
    for path in reports:
        report = load_report(path)
        envelope = path.with_name(path.name.removesuffix(".json") + ".dsse.json")
        assert verify_signed_report(envelope.read_bytes(), PUBLIC) == report, path
    for name, data in seen.items():
        assert (out / "reports" / name).read_bytes() == data, f"{name} lost or changed"
    seen.update({p.name: p.read_bytes() for p in reports})
    envelopes = {p.name.removesuffix(".dsse.json") for p in (out / "reports").glob("*.dsse.json")}
    orphans = len(envelopes - {p.name.removesuffix(".json") for p in reports})
    return len(reports), orphans


def test_kill_9_at_random_moments_loses_no_report(tmp_path, keys_dir):
    from hostile_server import HostileServer

    kills = 30 if SOAK else 3
    names = [f"s{i}" for i in range(4)]
    rng = random.Random(7)
    seen: dict[str, bytes] = {}
    temp_left = orphans = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    with HostileServer() as server:
        body = "".join(
            f"  - {{name: {n}, model: '{server.url}/slow_ok/x', http: {{decoys_per_key: 2, stealth_seed: {i}}}}}\n"
            for i, n in enumerate(names)
        )
        job = tmp_path / "job.yaml"
        job.write_text(
            f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\nsigning_key: {PRIVATE}\nsuspects:\n{body}"
        )
        out = tmp_path / "out"
        command = [sys.executable, "-c", _RUN_BATCH, str(job), str(out)]
        survived = 0
        for _ in range(kills):
            for report in rng.sample(sorted(seen), min(len(seen), 2)):  # keep the batch busy
                (out / "reports" / report).unlink()
                (out / "reports" / report.replace(".json", ".dsse.json")).unlink(missing_ok=True)
                del seen[report]
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.8, 2.5))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                survived += 1
            proc.wait(timeout=30)
            if (out / "reports").is_dir():
                _, orphans_now = _check_reports(out, seen)
                orphans = max(orphans, orphans_now)
        assert subprocess.run(command, env=env, capture_output=True, timeout=120).returncode == 0
        count, final_orphans = _check_reports(out, seen)
        temp_left = len([p for p in out.rglob("*.tmp")])
    assert count == len(names) and final_orphans == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["status"] for row in summary["suspects"]] == ["done"] * len(names)
    print(
        f"\nkill -9: {survived} of {kills} runs killed mid-batch, 0 reports lost or corrupted, "
        f"at most {orphans} orphaned envelopes between runs, {temp_left} temporary files left"
    )


# ---------------------------------------------------------------- bad files

VALUES = (None, [], "x", 1e308, -1, 10**30, "v" * 10_000)


def _broken(valid: bytes, syntax: str = "json") -> Iterator[tuple[str, bytes]]:
    """The ways the suite breaks a document: syntax, structure, numbers, then every field's type."""
    yield "empty", b""
    yield "junk", bytes(range(256)) * 4
    yield "not UTF-8", valid.replace(b'"', b'"\xff', 1)
    yield "BOM", b"\xef\xbb\xbf" + valid
    for cut in (1, len(valid) // 4, len(valid) // 2, len(valid) - 2):
        yield f"truncated at {cut}", valid[:cut]
    depth = 100_000 if syntax == "json" else 5_000  # PyYAML takes seconds per 100,000 levels
    yield "deep arrays", b"[" * depth + b"]" * depth
    yield "deep objects", b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    yield "5000-digit integer", b'{"schema_version": ' + b"9" * 5000 + b"}"
    yield "top-level list", b"[1, 2]"
    yield "null", b"null"
    if syntax == "json":
        yield "NaN", b'{"schema_version": NaN}'
        yield "Infinity", b'{"x": -Infinity}'
        yield "1e999", b'{"x": 1e999}'
        yield "duplicate key", valid.replace(b"{", b'{"schema_version": "x", ', 1)
    try:
        data = json.loads(valid)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return
    for key, original in data.items():
        for value in VALUES:
            yield f"{key}={str(value)[:12]}", json.dumps({**data, key: value}).encode()
        yield f"{key} removed", json.dumps({k: v for k, v in data.items() if k != key}).encode()
        inner = original[0] if isinstance(original, list) and original else original
        if isinstance(inner, dict):
            for sub in inner:
                for value in (None, "x", 10**30):
                    changed = {**inner, sub: value}
                    new = [changed, *original[1:]] if isinstance(original, list) else changed
                    yield f"{key}.{sub}={str(value)[:12]}", json.dumps({**data, key: new}).encode()
    yield "extra field", json.dumps({**data, "surprise": 1}).encode()


def _yaml_extras() -> Iterator[tuple[str, bytes]]:
    laughs = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    yield "billion laughs", laughs.encode()
    yield "python tag", b"keys: !!python/object/apply:os.system ['true']\nsuspects: []\n"
    yield "deep flow", b"a: " + b"[" * 5_000 + b"]" * 5_000
    yield "5000-digit YAML integer", b"alpha: " + b"9" * 5000 + b"\n"
    yield "tabs", b"keys:\t[\n\t]"
    yield "duplicate YAML key", b"alpha: 0.5\nalpha: 0.01\n"


def _toml_extras() -> Iterator[tuple[str, bytes]]:
    yield "deep TOML", b"a = " + b"[" * 10_000 + b"]" * 10_000
    yield "5000-digit TOML integer", b"alpha = " + b"9" * 5000
    yield "TOML nan", b"alpha = nan"
    yield "duplicate TOML key", b'keys = "a"\nkeys = "b"\n'


def _documents(tmp: Path, keys_dir: Path) -> dict[str, tuple[Path, bytes, Callable[[], object], str]]:
    """format -> (the file to break, its valid bytes, the loader, syntax)."""
    from safetensors.numpy import save_file
    from test_discriminator import shadow_distances
    from test_evidence import make_keyset, make_report

    from auditor.backends._diffusers import check_folder_settings
    from auditor.backends.engines.bundle import read_manifest
    from auditor.batch import load_job
    from auditor.commitment import commit, load_commitment, save_commitment
    from auditor.config import GenerationSettings
    from auditor.discriminator import Discriminator
    from auditor.documents import read_bytes
    from auditor.evidence import read_report_or_envelope, verify_signed_report, write_signed_report
    from auditor.identity import hash_model
    from auditor.keys import load_keyset
    from auditor.report import load_report, save_report
    from auditor.shadow import load_shadows

    keyset = make_keyset(tmp / "keys")
    report = make_report(keyset, np.zeros((len(keyset.keys), 32, 32, 3), dtype=np.uint8))
    save_report(report, tmp / "report.json")
    write_signed_report(report, PRIVATE, tmp / "report.dsse.json")
    save_commitment(tmp / "commitment.json", commit(keyset.digest))
    distances, labels = shadow_distances(0, per_class=4, num_keys=len(keyset.keys))
    Discriminator(random_state=0).fit(distances, labels).save(tmp / "disc.json", keyset.digest)
    (tmp / "shadows.json").write_text(
        json.dumps(
            {
                "schema_version": "t2i-auditor.shadow-set/v1",
                "models": [{"name": "a", "path": "a", "label": 1}, {"name": "b", "path": "b", "label": 0}],
            }
        )
    )
    (tmp / "bundle").mkdir()
    # a real manifest (the tiny pipeline's export, fp32, batch 1): the manifest must name every
    # graph of its pipeline, so a hand-made one would be as big and less true
    (tmp / "bundle/bundle.json").write_bytes((Path(__file__).parent / "fixtures/bundle.json").read_bytes())
    job = {
        "keys": str(keys_dir),
        "generation": {"steps": 2},
        "alpha": 0.01,
        "suspects": [{"name": "s", "model": "m"}],
    }
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "job.yaml").write_text(json.dumps(job))  # JSON is YAML
    (tmp / "job.toml").write_text(
        f'keys = "{keys_dir}"\nalpha = 0.01\n[generation]\nsteps = 2\n[[suspects]]\nname = "s"\nmodel = "m"\n'
    )
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(tmp / "w.safetensors"))
    (tmp / "pipe/scheduler").mkdir(parents=True)
    (tmp / "pipe/scheduler/scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "steps_offset": 1})
    )
    settings = GenerationSettings(steps=20, height=32, width=32)

    def loaders():
        yield "keyset", tmp / "keys/keys.json", lambda: load_keyset(tmp / "keys"), "json"
        yield "report", tmp / "report.json", lambda: load_report(tmp / "report.json"), "json"
        yield "report show", tmp / "report.json", lambda: read_report_or_envelope(tmp / "report.json"), "json"
        envelope = tmp / "report.dsse.json"
        yield (
            "envelope",
            envelope,
            lambda: verify_signed_report(read_bytes(envelope, "envelope"), PUBLIC),
            "json",
        )
        yield "envelope show", envelope, lambda: read_report_or_envelope(envelope), "json"
        yield "bundle manifest", tmp / "bundle/bundle.json", lambda: read_manifest(tmp / "bundle"), "json"
        yield "discriminator", tmp / "disc.json", lambda: Discriminator.load(tmp / "disc.json"), "json"
        yield "shadow set", tmp / "shadows.json", lambda: load_shadows(tmp / "shadows.json"), "json"
        yield "commitment", tmp / "commitment.json", lambda: load_commitment(tmp / "commitment.json"), "json"
        for suffix in ("json", "yaml", "toml"):
            path = tmp / f"job.{suffix}"
            yield f"job {suffix}", path, lambda path=path: load_job(path), suffix
        yield "safetensors", tmp / "w.safetensors", lambda: hash_model(tmp / "w.safetensors"), "safetensors"
        config = tmp / "pipe/scheduler/scheduler_config.json"
        yield "scheduler config", config, lambda: check_folder_settings(tmp / "pipe", settings), "json"

    return {name: (path, path.read_bytes(), load, syntax) for name, path, load, syntax in loaders()}


def _safetensors_broken(valid: bytes) -> Iterator[tuple[str, bytes]]:
    import struct

    (length,) = struct.unpack("<Q", valid[:8])
    header, rest = valid[8 : 8 + length], valid[8 + length :]
    for name, broken in _broken(header):
        yield f"header {name}", struct.pack("<Q", len(broken)) + broken + rest
    yield "header length 2**64-1", b"\xff" * 8 + valid[8:]
    yield "header length past the end", struct.pack("<Q", len(valid)) + valid[8:]
    yield "a pickle", b"\x80\x04K\x01."


class _WouldHang(Exception):
    """Raised instead of building a list of 10**30 names (which would never end)."""


def test_a_discriminator_claiming_huge_num_keys_is_refused_at_once(tmp_path, monkeypatch):
    from test_discriminator import shadow_distances

    import auditor.discriminator as module

    distances, labels = shadow_distances(0, per_class=4, num_keys=6)
    module.Discriminator(random_state=0).fit(distances, labels).save(tmp_path / "d.json")
    data = json.loads((tmp_path / "d.json").read_text())
    (tmp_path / "d.json").write_text(json.dumps({**data, "num_keys": 10**30}))
    real = module.feature_names

    def bounded(num_keys: int) -> list[str]:
        if num_keys > 10**6:
            raise _WouldHang(f"feature_names({num_keys}) would not end")
        return real(num_keys)

    monkeypatch.setattr(module, "feature_names", bounded)
    with pytest.raises(BadInputError, match="num_keys|feature_names"):
        module.Discriminator.load(tmp_path / "d.json")


def test_bad_files_of_every_format_give_one_line_never_a_traceback(tmp_path, keys_dir):
    docs = _documents(tmp_path, keys_dir)
    tried: Counter = Counter()
    tracebacks = []
    slowest = (0.0, "")
    per_format: dict[str, float] = {}
    for name, (path, valid, load, syntax) in docs.items():
        assert _classify(load)[0] == "ok", name  # the valid document loads
        if syntax == "safetensors":
            cases = list(_safetensors_broken(valid))
        else:
            cases = list(_broken(valid, syntax))
            cases += list(_yaml_extras()) if syntax == "yaml" else []
            cases += list(_toml_extras()) if syntax == "toml" else []
        started = time.monotonic()
        for label, data in cases:
            path.write_bytes(data)
            start = time.monotonic()
            outcome, value = _classify(load)
            seconds = time.monotonic() - start
            slowest = max(slowest, (seconds, f"{name}: {label}"))
            tried[name] += 1
            if outcome == "crash":
                tracebacks.append((name, label, f"{type(value).__name__}: {str(value)[:160]}"))
            elif outcome != "ok":
                assert len(str(value)) <= 2000, (name, label)
        per_format[name] = round(time.monotonic() - started, 2)
        path.write_bytes(valid)
        for label, make in _in_place_of(path):
            make()
            outcome, value = _classify(load)
            tried[name] += 1
            if outcome == "crash":
                tracebacks.append((name, label, f"{type(value).__name__}: {str(value)[:160]}"))
            _restore(path, valid)
    total = sum(tried.values())
    print(
        f"\nbad files: {total} tried over {len(docs)} formats, {len(tracebacks)} tracebacks; slowest {slowest}"
    )
    print(f"seconds per format: {per_format}")
    assert tracebacks == []
    assert slowest[0] < 10


def _in_place_of(path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    def folder():
        path.unlink()
        path.mkdir()

    def fifo():
        path.unlink()
        os.mkfifo(path)

    def device():
        path.unlink()
        path.symlink_to("/dev/zero")

    def giant():
        with open(path, "wb") as handle:
            handle.truncate((64 << 20) + 1)  # sparse: costs no disk

    def missing():
        path.unlink()

    yield from (("a folder", folder), ("a FIFO", fifo), ("/dev/zero", device), ("64 MiB", giant))
    yield "missing", missing


def _restore(path: Path, valid: bytes) -> None:
    if path.is_symlink() or path.is_file() or path.exists() and not path.is_dir():
        path.unlink()
    elif path.is_dir():
        path.rmdir()
    path.write_bytes(valid)


# ---------------------------------------------------------------- prompts and seeds in keysets

BAD_PROMPT_CHARS = ["\x00", "\x1b[2J", "\x1b]8;;http://x\x07", "\t", "\n", "\r", "\x7f", "\x85", "\x9b"] + [
    chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
]
BAD_SEEDS: list[object] = [True, False, -1, -(2**70), 2**63, 2**64, 3.0, "3", None]


def test_keyset_prompts_with_controls_and_seeds_out_of_range_are_refused(tmp_path, keys_dir, capsys):
    import shutil

    from auditor.keys import load_keyset
    from auditor.text import visible
    from auditor.views import _e, _term

    tried = 0
    folder = tmp_path / "keys"
    shutil.copytree(keys_dir, folder)
    original = json.loads((keys_dir / "keys.json").read_text())

    def refused(edit: Callable[[dict], None], field: str) -> None:
        doc = json.loads(json.dumps(original))
        edit(doc)
        (folder / "keys.json").write_text(json.dumps(doc))
        with pytest.raises(BadInputError) as info:
            load_keyset(folder)
        message = str(info.value)
        assert "\n" not in message and f"field '{field}'" in message, message

    for char in BAD_PROMPT_CHARS:
        refused(lambda d, c=char: d["keys"][1].update(prompt="a red" + c + " circle"), "keys.1.prompt")
        shown = visible("a" + char + "b")
        assert shown.isprintable() and "\\u" in shown and char not in _e(shown) and char not in _term(shown)
        tried += 1
    for seed in BAD_SEEDS:
        refused(lambda d, s=seed: d["keys"][0].update(seed=s), "keys.0.seed")
        refused(lambda d, s=seed: d["keys"][0].update(selection_seeds=[5, s]), "keys.0.selection_seeds.1")
        tried += 2
    (folder / "keys.json").write_text(json.dumps(original))
    load_keyset(folder)  # the unedited keyset still loads
    from t2i_audit._common import read_prompts

    (tmp_path / "prompts.txt").write_text("a red circle\nevil\u202etxt.exe\n")
    with pytest.raises(BadInputError, match=r"prompts.txt: line 2: .*U\+202E"):
        read_prompts(str(tmp_path / "prompts.txt"))  # refused before selection, not after it
    print(
        f"\nkeysets: {len(BAD_PROMPT_CHARS)} control/bidi prompts and {2 * len(BAD_SEEDS)} bad seeds, all refused"
    )
    assert tried == len(BAD_PROMPT_CHARS) + 2 * len(BAD_SEEDS)


def test_a_report_page_and_the_terminal_show_control_characters_never_obey_them():
    from rich.console import Console

    from auditor.views import _e

    hostile = "evil\u202eexe.png\x1b[2J[red]x[/red]<b>"
    assert _e(hostile) == "evil\\u202eexe.png\\u001b[2J[red]x[/red]&lt;b&gt;"
    console = Console(record=True, width=200, color_system=None)
    from auditor.views import _term

    console.print(_term(hostile))
    assert console.export_text().strip() == "evil\\u202eexe.png\\u001b[2J[red]x[/red]<b>"
