"""A golden report: the audit's behaviour pinned, as far as a CPU allows, to tests/golden/report.json.

One audit of a seeded random-weight pipeline against five seeded references, through the
CLI. Any change to what an audit computes or records shows here; a change that is meant
must regenerate the file on purpose:

    T2I_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_report.py

How each part is pinned, and why:
- Everything that depends neither on generated pixels nor on the installed library versions
  (schema, settings, seeds, the keyset digest, the models' content digests, audit token,
  counts, labels, the binomial figure) is compared to the byte.
- What the installed libraries write is checked for form only: the models' byte digests
  (transformers and diffusers record their own version in every saved config.json, so a new
  release within pyproject's ranges gives every model new bytes; 5.24.0 -> 5.25.0 did) and
  the `backend.versions` a report records. The content digest, over the weights alone,
  pins the same models to the byte; `test_library_versions_do_not_move_the_golden_comparison`
  shows that a model whose recorded versions were rewritten compares equal.
- Distances compare to a relative 5e-2. Generated pixels are float32 and differ between
  machines, and a random-weight pipeline amplifies that: this fixture's distances moved by
  a relative 1e-5 between a pytest process and a plain one on one machine (memory layout),
  and by up to 2.5e-2 between the box that wrote the file and the CI box. A changed distance
  definition (scale, range, pooling) moves them by far more.
- Image hashes are checked for number and form only: one bit of one pixel changes a hash.
- The verdict's numbers (statistics, p-values, and the reason that quotes them) are a pure
  float64 function of the distances, so they are pinned where no CPU can move them: the
  golden file's own distances must give the golden verdict again (to 1e-9), and this run's
  distances must give this run's verdict (what `verify` checks of a signed report). Their
  labels and counts compare to the byte; their values are not compared across the two runs,
  because a 3-key statistic can move by more than the distances do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from keyset_factory import make_keyset
from model_copies import rewrite_library_versions

from auditor.evidence import _same_verdict
from auditor.keys import save_keyset
from auditor.report import inconsistencies, parse_report, recompute_verdict
from export.testing import build_tiny_pipeline

GOLDEN = Path(__file__).parent / "golden" / "report.json"
# Fields that change from run to run by design: when, and how long it took.
VOLATILE = (("created_at",), ("summary", "seconds"))
DISTANCE_RTOL = 5e-2
# Where a report records numbers computed from generated pixels (apart from the verdict's).
PIXEL_FIELDS = frozenset({"distance", "distances", "seed_distances", "best_distance", "mean_distance"})
# What the installed libraries write: a model's byte digest (its configs record the library
# versions that saved it) and the versions a report records. Checked for form, never pinned.
LIBRARY_DIGESTS = frozenset({("suspect", "digest"), ("references", "digest")})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^\d+(\.\d+)*([.+\-]?[0-9A-Za-z.+\-]*)$")
_NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")


def _scrub(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    for path in VOLATILE:
        node = report
        for part in path[:-1]:
            node = node[part]
        assert path[-1] in node, f"volatile field {'.'.join(path)} is missing"
        node[path[-1]] = "<volatile>"
    return report


def _as_report(document: dict):
    """The scrubbed golden document as a report again (the volatile fields given any valid value)."""
    document = json.loads(json.dumps(document))
    document["created_at"] = "2026-01-01T00:00:00Z"
    document["summary"]["seconds"] = 0.0
    return parse_report(document, str(GOLDEN))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    names = ["suspect", *(f"ref-{i}" for i in range(5))]
    return {name: build_tiny_pipeline(root / name, seed=seed) for seed, name in enumerate(names)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden-keys") / "keys"
    keyset, images = make_keyset(n=3)
    save_keyset(keyset, images, root)
    return root


def _audit(suspect: Path, models: dict[str, Path], keys: Path, out: Path) -> dict:
    from t2i_audit import main

    argv = [
        "--format", "json", "audit", "--keys", str(keys), "--suspect", str(suspect),
        *[arg for i in range(5) for arg in ("--reference", str(models[f"ref-{i}"]))],
        "--steps", "2", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return _scrub(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def report(models, keys, tmp_path_factory) -> dict:
    got = _audit(models["suspect"], models, keys, tmp_path_factory.mktemp("golden-audit") / "report.json")
    if os.environ.get("T2I_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    return got


def test_report_matches_the_golden_file(report):
    expected = json.loads(GOLDEN.read_text())
    assert _comparable(report) == _comparable(expected, wrap=True)


def test_library_versions_do_not_move_the_golden_comparison(models, keys, report, tmp_path):
    """The same weights saved by other library releases (their versions in every config), and a
    report written under other installed versions, compare equal to this run's report."""
    copy = tmp_path / "other-release" / models["suspect"].name
    shutil.copytree(models["suspect"], copy)
    assert rewrite_library_versions(copy) >= 2  # transformers' text encoder and diffusers' configs
    other = _audit(copy, models, keys, tmp_path / "report.json")
    assert other["suspect"]["digest"] != report["suspect"]["digest"]  # the bytes did change
    assert other["suspect"]["content_digest"] == report["suspect"]["content_digest"]
    for block in (other["backend"], *(ref["backend"] for ref in other["references"])):
        block["versions"] = {name: "99.0.0" for name in block["versions"]}
    assert _comparable(other) == _comparable(report)
    # and it is not blind to the models: other weights (another content digest) do move it
    other["suspect"]["content_digest"] = report["references"][0]["content_digest"]
    assert _comparable(other) != _comparable(report)


def test_the_golden_verdict_follows_from_the_golden_distances():
    golden = _as_report(json.loads(GOLDEN.read_text()))
    assert inconsistencies(golden) == []
    assert _same_verdict(recompute_verdict(golden), golden.verdict)


def test_this_runs_verdict_follows_from_this_runs_distances(report):
    got = _as_report(report)
    assert inconsistencies(got) == []
    assert _same_verdict(recompute_verdict(got), got.verdict)


def _comparable(node, wrap: bool = False, path: tuple[str, ...] = ()):
    """The document with pixel-derived values made comparable across machines (module docstring).

    `wrap` marks the expected side: its distances become `pytest.approx` values; every other
    float outside the verdict's test is a setting or a count's ratio and compares exactly.
    """
    if path[-2:] == ("backend", "versions"):
        assert isinstance(node, dict) and all(
            isinstance(v, str) and _VERSION.match(v) for v in node.values()
        ), f"{'.'.join(path)}: not a mapping of library names to versions"
        return {name: "<version>" for name in node}
    if isinstance(node, dict):
        return {key: _comparable(value, wrap, (*path, key)) for key, value in node.items()}
    if isinstance(node, list):
        if path and path[-1] == "image_sha256s":
            assert all(isinstance(h, str) and _HEX64.match(h) for h in node), (
                f"{'.'.join(path)}: not sha256 hex"
            )
            return f"<{len(node)} image hashes>"
        return [_comparable(value, wrap, path) for value in node]
    if path and (path[0], path[-1]) in LIBRARY_DIGESTS:
        assert isinstance(node, str) and _HEX64.match(node), f"{'.'.join(path)}: not sha256 hex"
        return "<library-dependent digest>"
    if path[:2] == ("verdict", "test") and isinstance(node, int | float) and not isinstance(node, bool):
        return "<follows from the distances>"  # `sanity_reference` too: the index of the smallest p
    if path == ("verdict", "reason"):
        return _NUMBER.sub("#", node)
    if isinstance(node, float) and wrap and PIXEL_FIELDS.intersection(path):
        return pytest.approx(node, rel=DISTANCE_RTOL, abs=1e-9)
    return node
