"""Zoo artifact caching: content-addressed, resumable, never half-written."""

import pytest

from auditor.progress import Reporter
from auditor.zoo.build import _Artifacts, config_digest
from auditor.zoo.config import PRESETS


def test_artifact_built_once_then_cached(tmp_path):
    store = _Artifacts(tmp_path, Reporter())
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x")

    first, digest = store.get("base", {"steps": 3}, build)
    again, digest2 = store.get("base", {"steps": 3}, build)
    assert first == again and digest == digest2 and len(calls) == 1
    assert (first / "weights.bin").read_bytes() == b"x"
    other, _ = store.get("base", {"steps": 4}, build)
    assert other != first and len(calls) == 2


def test_failed_build_leaves_nothing_and_stale_temp_dirs_are_cleared(tmp_path):
    store = _Artifacts(tmp_path, Reporter())

    def crash(out):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        store.get("source", {"a": 1}, crash)
    assert list(store.root.iterdir()) == []

    # A build killed with SIGKILL leaves its temp folder; the next build removes it.
    digest = config_digest({"a": 1})
    stale = store.root / f".source-{digest[:16]}.tmp-999999999"
    stale.mkdir()
    path, _ = store.get("source", {"a": 1}, lambda out: (out / "ok").write_text("1"))
    assert not stale.exists() and (path / "ok").exists()


def test_presets_have_distinct_digests_and_paper_roles():
    assert config_digest(PRESETS["demo"]) != config_digest(PRESETS["test"])
    demo = PRESETS["demo"]
    assert {s.rho for s in demo.suspects} == {1.0, 0.3, 0.0}
    assert all(r.rho == 0 for r in demo.references)
