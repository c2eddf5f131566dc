"""Packaging metadata, built for real: licence, build backend, the GPU pins, the verify-only install, and the
lock (constraints.txt) every install takes its versions from."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

# pytest itself depends on packaging, so it is there wherever these tests run.
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

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


def _gpu_extra() -> dict[str, Requirement]:
    return {
        canonicalize_name(req.name): req
        for req in map(Requirement, PYPROJECT["project"]["optional-dependencies"]["gpu"])
    }


def test_gpu_extra_is_on_cuda_13():
    """One CUDA line, CUDA 13: torch 2.13 has CUDA 12.6 and 13.0 builds only, PyPI's onnxruntime-gpu
    is a CUDA 13 build from 1.27 (1.26.0 was the last CUDA 12 one), and TensorRT comes as its CUDA 13
    package, from 10.13 (its first CUDA 13 release) and below 11: ONNX Runtime's TensorRT provider
    links libnvinfer.so.10."""
    gpu = _gpu_extra()
    assert not {"tensorrt", "tensorrt-cu12", "onnxruntime"} & set(gpu)  # the CPU build never beside -gpu
    assert set(gpu) == {"onnx", "onnxruntime-gpu", "tensorrt-cu13"}
    trt = gpu["tensorrt-cu13"].specifier
    assert {v for v in ("10.12.0.36", "10.13.2.6", "10.16.1.11", "11.0.0.114") if trt.contains(v)} == {
        "10.13.2.6",
        "10.16.1.11",
    }
    ort = gpu["onnxruntime-gpu"].specifier
    assert not ort.contains("1.26.0") and ort.contains("1.27.0") and ort.contains("1.31.1")


def test_gpu_pin_check_can_fail(monkeypatch):
    """The CUDA 12 pins of before fail the check above."""
    old = {"gpu": ["onnx>=1.16", "onnxruntime-gpu>=1.19", "tensorrt-cu12>=10,<12"]}
    monkeypatch.setitem(PYPROJECT["project"], "optional-dependencies", old)
    with pytest.raises(AssertionError):
        test_gpu_extra_is_on_cuda_13()


def test_gpu_image_pins_fit_the_gpu_extra():
    """docker/Dockerfile installs the gpu extra less TensorRT (its base's) at the versions it pins:
    those must lie in the extra's ranges, and torch must come from the CUDA 13.0 index."""
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    pin = re.search(r"^ARG ONNXRUNTIME_GPU_VERSION=(\S+)$", text, re.M)
    assert pin and _gpu_extra()["onnxruntime-gpu"].specifier.contains(pin.group(1))
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu130$", text, re.M)
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.M)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(
        r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", base.group(1)
    )


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
    assert 'Requires-Dist: tensorrt-cu13<11,>=10.13; extra == "gpu"' in metadata
    assert 'Requires-Dist: onnxruntime-gpu>=1.27; extra == "gpu"' in metadata
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


# ---------------------------------------------------------------- the lock

LOCK = ROOT / "constraints.txt"
LOCKED_EXTRAS = ("test", "onnx", "ray")  # what `make lock` installs (LOCK_EXTRAS in the Makefile)
NOT_LOCKED = {"t2i-auditor", "pip", "setuptools", "wheel"}  # the project and the installers


def _parse_lock(text: str) -> dict[str, str]:
    """{name: version} of a constraints file whose every line is a normalized, unique `name==version` pin."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"constraints.txt:{number}: {line!r}"
        requirement = Requirement(line)
        assert not requirement.extras and requirement.marker is None and requirement.url is None, where
        specs = list(requirement.specifier)
        assert len(specs) == 1, where
        (spec,) = specs
        assert spec.operator == "==" and "*" not in spec.version, where
        try:
            version = Version(spec.version)
        except InvalidVersion:  # a legacy version pip could only match literally
            pytest.fail(f"{where}: not a PEP 440 version")
        assert version.local is None, f"{where}: a local label (+cpu) pins one build only"
        assert requirement.name == canonicalize_name(requirement.name), f"{where}: not PEP 503-normalized"
        assert requirement.name not in pins, f"{where}: listed twice"
        assert requirement.name not in NOT_LOCKED, where
        pins[requirement.name] = spec.version
    return pins


def _lock_violations(pins: dict[str, str]) -> list[str]:
    """Every requirement of the dependencies and of the locked and verify extras (markers evaluated for
    this platform) that the lock leaves out or pins outside pyproject.toml's range."""
    project = PYPROJECT["project"]
    groups = [("", project["dependencies"])]
    groups += [(extra, project["optional-dependencies"][extra]) for extra in (*LOCKED_EXTRAS, "verify")]
    problems = []
    for extra, requirements in groups:
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in pins:
                problems.append(f"{text!r} ({extra or 'dependencies'}): not in the lock")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{text!r} ({extra or 'dependencies'}): the lock pins {name}=={pins[name]}")
    return problems


def test_the_lock_is_a_list_of_exact_pins():
    text = LOCK.read_text(encoding="utf-8")
    pins = _parse_lock(text)
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("#") and "Generated" in header and "`make lock`" in header  # says how to redo it
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert body == sorted(body, key=lambda line: line.split("==")[0])
    # torch as the Makefile pins it, with no local label: one line for the CPU and the CUDA wheels
    makefile_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_torch and pins["torch"] == makefile_torch.group(1) == "2.13.0"
    assert "torch==2.13.0\n" in text


def test_the_lock_satisfies_pyproject_ranges():
    pins = _parse_lock(LOCK.read_text(encoding="utf-8"))
    assert _lock_violations(pins) == []
    # the check can fail: a pin outside a range, and a requirement left out
    broken = {**pins, "transformers": "4.0.0"}
    assert _lock_violations(broken) == [
        "'transformers>=5.0,<6' (dependencies): the lock pins transformers==4.0.0"
    ]
    without_ray = {name: version for name, version in pins.items() if name != "ray"}
    assert _lock_violations(without_ray) == ["'ray>=2.40' (ray): not in the lock"]


def _reached_from_the_project() -> dict[str, str]:
    """Every distribution the installed t2i-auditor[test,onnx,ray] requires, transitively (markers
    evaluated with each requirement's extras): {name: who required it}."""
    from importlib.metadata import PackageNotFoundError, distribution

    reached: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [("t2i-auditor", frozenset(LOCKED_EXTRAS))]
    while queue:
        name, extras = queue.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:  # reached but not installed here: its own requirements are unknown
            continue
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            dependency = canonicalize_name(requirement.name)
            reached.setdefault(dependency, f"{name}: {text}")
            queue.append((dependency, frozenset(requirement.extras)))
    return reached


def test_the_lock_covers_everything_the_install_pulls_in():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("t2i-auditor")
    except PackageNotFoundError:
        pytest.skip("t2i-auditor is not installed in this environment (make setup): no metadata to walk")
    pins = _parse_lock(LOCK.read_text(encoding="utf-8"))
    reached = _reached_from_the_project()
    assert {"torch", "transformers", "cryptography", "onnxruntime", "ray", "pytest"} <= set(reached)
    missing = {name: why for name, why in reached.items() if name not in pins and name not in NOT_LOCKED}
    assert not missing, f"not in constraints.txt (make lock): {missing}"


def test_every_install_takes_the_lock():
    """make setup (the stamp re-runs when the lock changes), setup-verify, and both images."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK\s*:?=\s*constraints\.txt$", makefile, re.M)
    assert re.search(r"^\$\(STAMP\):.*\bpyproject\.toml\b.*\$\(LOCK\)", makefile, re.M)
    installs = [
        line
        for line in makefile.splitlines()
        if re.search(r"pip install\b", line)
        and not line.lstrip().startswith("#")  # a comment installs nothing
    ]
    unlocked = [line for line in installs if "-c $(LOCK)" not in line]
    # only the installers, the package itself --no-deps, and `make lock`'s own (unconstrained) resolve
    assert all('"setuptools>=77"' in line or "--no-deps" in line or "LOCK_VENV" in line for line in unlocked)
    assert any("-c $(LOCK)" in line and "$(TORCH)" in line for line in installs)
    assert any("-c $(LOCK)" in line and "$(EXTRAS)" in line for line in installs)
    assert any("-c $(LOCK)" in line and "verify-requirements" in line for line in installs)
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
    for dockerfile, constraint in (
        ("Dockerfile", "-c /dist/constraints.txt"),
        ("Dockerfile.cpu", "-c constraints.txt"),
    ):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert re.search(r"^COPY constraints\.txt ", text, re.M), dockerfile
        assert constraint in text, dockerfile
