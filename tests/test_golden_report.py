"""A golden report: the audit's behaviour, pinned to the byte (timestamps and timings aside).

One audit of a seeded random-weight pipeline against two seeded references, through the
CLI, compared with tests/golden/report.json. Any change to what an audit computes or
records (distances, hits, verdict, seeds, settings, digests, schema) shows here; a change
that is meant must regenerate the file on purpose. Floats compare to a relative 2e-3:
float32 kernels differ between CPUs in the sixth digit (measured on two x86_64 machines:
distances 0.33908014 and 0.33908142 for the same seed, and the sparse statistic, built
from per-key z-scores over five references, moved by a relative 6.7e-4); everything else
to the byte:

    T2I_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_report.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from keyset_factory import make_keyset

from auditor.keys import save_keyset
from export.testing import build_tiny_pipeline

GOLDEN = Path(__file__).parent / "golden" / "report.json"
# Fields that change from run to run by design: when, and how long it took.
VOLATILE = (("created_at",), ("summary", "seconds"))


def _scrub(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    for path in VOLATILE:
        node = report
        for part in path[:-1]:
            node = node[part]
        assert path[-1] in node, f"volatile field {'.'.join(path)} is missing"
        node[path[-1]] = "<volatile>"
    return report


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    names = ["suspect", *(f"ref-{i}" for i in range(5))]
    return {name: build_tiny_pipeline(root / name, seed=seed) for seed, name in enumerate(names)}


def test_report_matches_the_golden_file(models, tmp_path):
    from t2i_audit import main

    keyset, images = make_keyset(n=3)
    save_keyset(keyset, images, tmp_path / "keys")
    out = tmp_path / "report.json"
    argv = [
        "--format", "json", "audit", "--keys", str(tmp_path / "keys"), "--suspect", str(models["suspect"]),
        *[arg for i in range(5) for arg in ("--reference", str(models[f"ref-{i}"]))],
        "--steps", "2", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    got = _scrub(json.loads(out.read_text()))
    if os.environ.get("T2I_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got == _approx(expected)


def _approx(node):
    """The golden document with every float wrapped for a relative 2e-3 comparison."""
    if isinstance(node, dict):
        return {key: _approx(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_approx(value) for value in node]
    if isinstance(node, float):
        return pytest.approx(node, rel=2e-3, abs=1e-9)
    return node
