"""Packaging metadata, built for real: licence, build backend, the GPU pins, and the verify-only install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "matplotlib",
    "peft",
    "accelerate",
    "safetensors",
    "scikit-learn",
)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_build_backend_can_read_an_spdx_license():
    """setuptools 68 rejects `license = "Apache-2.0"` (PEP 639 support came in 77)."""
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(r for r in requires if _name(r) == "setuptools")
    low = re.search(r">=\s*([0-9]+)", setuptools)
    assert low and int(low.group(1)) >= 77, setuptools
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (
        "Apache License" in text
        and "Version 2.0, January 2004" in text
        and "END OF TERMS AND CONDITIONS" in text
    )


def test_gpu_extra_stays_on_cuda_12():
    """PyPI's onnxruntime-gpu is a CUDA 12 build; the bare `tensorrt` meta-package now brings CUDA 13."""
    gpu = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    names = {_name(r): r for r in gpu}
    assert "tensorrt" not in names
    assert re.search(r"<\s*12", names["tensorrt-cu12"]) and ">=10" in names["tensorrt-cu12"]
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names  # never both


def test_verify_extra_is_light():
    verify = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["verify"]}
    assert {"pydantic", "securesystemslib", "numpy", "pillow", "scipy", "pyyaml", "rich"} == verify
    assert not verify & set(HEAVY)
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert verify <= core  # the full install can verify too


def test_wheel_metadata_carries_the_license(tmp_path):
    """A real build (no isolation: offline) of a copy of the tree, with the venv's setuptools."""
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip(
            f"setuptools {version('setuptools')} here; `make setup` installs >= 77 (PEP 639 licences)"
        )
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for package in ("auditor", "export", "t2i_audit"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("t2i_auditor-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(
            next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        ).decode()
        names = archive.namelist()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert 'Requires-Dist: tensorrt-cu12<12,>=10; extra == "gpu"' in metadata
    assert "Provides-Extra: verify" in metadata


BLOCKER = """
import importlib.abc, sys
HEAVY = {heavy!r}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {{name!r}} (verify-only install)")
sys.meta_path.insert(0, NotInstalled())
"""
BLOCKED = ("torch", "diffusers", "transformers", "matplotlib", "peft", "accelerate", "safetensors", "sklearn")


def _run_without_ml(code: str) -> subprocess.CompletedProcess:
    script = BLOCKER.format(heavy=set(BLOCKED)) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.fixture
def signed(tmp_path, capsys):
    """A signed report, its public key and keyset, made the way tests/test_evidence.py makes them."""
    from test_evidence import build_world

    return build_world(tmp_path, capsys)


def test_verifying_a_signed_report_needs_no_ml_library(signed):
    """The library path a third party runs (signature, schema, subject, keyset images) with none of the
    ML stack importable."""
    code = f"""
from auditor.evidence import verify_signed_report_details
envelope = open({str(signed.envelope)!r}, "rb").read()
verified = verify_signed_report_details(envelope, {str(signed.public)!r}, {str(signed.keys_dir)!r}, source="x")
print("verified", *verified.checks)
print("loaded", *sorted(m for m in {BLOCKED!r} if m in sys.modules))
"""
    done = _run_without_ml(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("verified ") and "keyset" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "loaded"


def test_the_verify_command_needs_no_ml_library(signed):
    code = f"""
from t2i_audit import main
argv = ["verify", {str(signed.envelope)!r}, "--key", {str(signed.public)!r}, "--keys", {str(signed.keys_dir)!r}]
sys.exit(main(argv))
"""
    done = _run_without_ml(code)
    assert done.returncode == 0, done.stderr[-3000:]
