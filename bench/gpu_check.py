"""`make gpu-check`: everything a lent GPU should tell us, in order of value, within a time budget.

    python bench/gpu_check.py [--out gpu-check.json] [--workdir .cache/gpu-check]
                              [--budget-s 570] [--only STEP,...] [--skip STEP,...] [--dry-run]

On a CUDA host with TensorRT (`make setup EXTRAS=test,gpu` after a CUDA 12 build of torch, or the
GPU image), from a cold start, and within `--budget-s` (default 570 s: the lent machine gives
about 15 minutes in all, start-up included, and a run must finish within 10):

1. `env`: GPU, driver-visible versions, TensorRT, ONNX Runtime providers (seconds);
2. `gpu-tests`: the test suite's GPU tests (`pytest -m gpu`): TensorRT engines, ONNX Runtime CUDA;
3. `sd15-pipeline`: Stable Diffusion 1.5's architecture with random weights (export.testing);
4. `sd15-export-fp16`: its fp16 bundle for GPU hosts (one shape profile up to batch 30, checks
   on the CUDA provider, the fp16 denoising-loop parity);
5. `unet-fp16`: bench/unet.py, one guided step at batch 1, 8, 30: torch eager, torch.compile,
   ONNX Runtime CUDA with IO binding, TensorRT; FLOP/s and the fraction of the fp16 peak;
6. `generate-fp16`: bench/generate.py, end to end at batch 8, 1, 30 and 20 then 50 steps, each
   backend's speed and PSNR against torch fp32 images of the same keys;
7. `sdxl-unet-fp16`: bench/unet.py --arch sdxl, SDXL base's 2.6B-parameter UNet with random weights
   at 1024x1024 (text_embeds and time_ids inputs), one guided step at batch 1 and 4 on torch eager
   and torch.compile: FLOP/s and the fraction of the fp16 peak (no ONNX export: its fp32 graph is
   10 GB; `bench/unet.py --arch sdxl --backends onnx,tensorrt` on a longer lease);
8. `unet-fp32`: fp32 engines last (TF32 off), the most expensive build for the least news.

A step starts only when at least its minimum time is left, and runs under a timeout of what is
left; a step that cannot start is recorded as skipped with the reason. The JSON (`--out`) is
rewritten after every step, and on SIGTERM or SIGINT the running step's process group is
stopped, the step marked "interrupted", its partial results kept (the benches rewrite their
own JSON after every configuration) and the file written before exiting 143. Exit status: 0
when every step that ran passed, 1 otherwise, 2 for bad arguments.

Everything but the steps' own work (argument handling, the budget, skipping, timeouts, the
JSON, the signal handling) is plain Python, tested on the CPU by tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESERVE_S = 10.0  # kept back for stopping a step and writing the JSON
EXIT_INTERRUPTED = 143


@dataclass
class Step:
    """One unit of the check: a command, the least time worth starting it with, and its cap."""

    name: str
    description: str
    min_s: float
    cap_s: float
    argv: Callable[[Context], list[str]]
    result: Callable[[Context], dict | None] = lambda ctx: None
    needs_cuda: bool = True


@dataclass
class Context:
    workdir: Path
    out: Path
    deadline: float  # time.time() by which every step must be over
    python: str = sys.executable
    cuda: bool = False
    document: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.workdir / name


def decide(step: Step, remaining_s: float, cuda: bool) -> tuple[float | None, str]:
    """(timeout, "") to run `step` with `remaining_s` left, or (None, why it is skipped)."""
    if step.needs_cuda and not cuda:
        return None, "skipped: no CUDA device with TensorRT here"
    usable = remaining_s - RESERVE_S
    if usable < step.min_s:
        return (
            None,
            f"skipped: time ran short ({max(usable, 0):.0f} s left, needs at least {step.min_s:.0f} s)",
        )
    return min(step.cap_s, usable), ""


def write_json(path: Path, document: dict) -> None:
    """Whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def junit_summary(path: Path) -> dict | None:
    """Counts and failing test ids from pytest's --junitxml file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return totals | {"failed": failed}


class Interrupted(Exception):
    pass


def _on_signal(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the step's whole process group, then SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, ctx: Context, timeout: float) -> dict:
    """Run one step's command in its own process group under `timeout`; its log goes to workdir."""
    log = ctx.path(f"{step.name}.log")
    record: dict = {"description": step.description, "timeout_s": round(timeout, 1)}
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        argv = step.argv(ctx)
        record["command"] = argv
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
            record["status"] = "passed" if code == 0 else "failed"
            record["exit_code"] = code
        except subprocess.TimeoutExpired:
            _stop(proc)
            record["status"] = "timeout"
        except Interrupted as exc:
            _stop(proc)
            record["status"] = "interrupted"
            record["signal"] = str(exc)
            raise
        finally:
            record["seconds"] = round(time.monotonic() - start, 1)
            record["log"] = str(log)
            record["result"] = step.result(ctx)
            record["log_tail"] = _tail(log)
            ctx.document["steps"][step.name] = record
            write_json(ctx.out, ctx.document)
    return record


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_check(steps: list[Step], ctx: Context) -> int:
    """Run `steps` in order within ctx.deadline; the JSON is current after every step."""
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.document.setdefault("steps", {})
    ctx.document["plan"] = [s.name for s in steps]
    write_json(ctx.out, ctx.document)
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for step in steps:
            timeout, why = decide(step, ctx.deadline - time.time(), ctx.cuda)
            if timeout is None:
                ctx.document["steps"][step.name] = {
                    "description": step.description,
                    "status": "skipped",
                    "reason": why,
                }
                write_json(ctx.out, ctx.document)
                continue
            record = run_step(step, ctx, timeout)
            if record["status"] != "passed":
                code = 1
    except Interrupted as exc:
        ctx.document["interrupted"] = str(exc)
        for step in steps:  # what never started
            ctx.document["steps"].setdefault(
                step.name, {"description": step.description, "status": "skipped", "reason": f"skipped: {exc}"}
            )
        code = EXIT_INTERRUPTED
    finally:
        ctx.document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(ctx.out, ctx.document)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code


# ---------------------------------------------------------------- the steps


ENV_CODE = """
import json, platform
info = {"python": platform.python_version()}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as exc:
    info["torch_error"] = repr(exc)
try:
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    info["ort_providers"] = onnxruntime.get_available_providers()
except Exception as exc:
    info["onnxruntime_error"] = repr(exc)
from auditor.backends.engines.trt import tensorrt_status
info["tensorrt_status"] = tensorrt_status() or "ok"
try:
    import tensorrt
    info["tensorrt"] = tensorrt.__version__
except Exception as exc:
    info["tensorrt_error"] = repr(exc)
json.dump(info, open(OUT, "w"), indent=2)
"""


def _bench(ctx: Context, script: str, *args: str) -> list[str]:
    return [ctx.python, str(ROOT / "bench" / script), *args]


def _deadline_arg(ctx: Context, step_cap: float) -> str:
    return str(min(ctx.deadline, time.time() + step_cap) - 30.0)


def default_steps() -> list[Step]:
    model = lambda ctx: ctx.path("sd15/model")  # noqa: E731
    bundle = lambda ctx: ctx.path("sd15-fp16.bundle")  # noqa: E731
    return [
        Step(
            "env",
            "GPU, CUDA, torch, ONNX Runtime providers, TensorRT",
            min_s=5,
            cap_s=90,
            needs_cuda=False,
            argv=lambda ctx: [ctx.python, "-c", f"OUT = {str(ctx.path('env.json'))!r}\n" + ENV_CODE],
            result=lambda ctx: read_json(ctx.path("env.json")),
        ),
        Step(
            "gpu-tests",
            "pytest -m gpu: TensorRT engines and ONNX Runtime CUDA on the tiny pipeline",
            min_s=60,
            cap_s=200,
            argv=lambda ctx: [
                ctx.python,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-p",
                "no:cacheprovider",
                "tests",
                f"--junitxml={ctx.path('gpu-tests.xml')}",
            ],  # fmt: skip
            result=lambda ctx: junit_summary(ctx.path("gpu-tests.xml")),
        ),
        Step(
            "sd15-pipeline",
            "Stable Diffusion 1.5 architecture, random weights (export.testing.build_sd15_pipeline)",
            min_s=30,
            cap_s=150,
            argv=lambda ctx: [
                ctx.python,
                "-c",
                f"from export.testing import build_sd15_pipeline; build_sd15_pipeline({str(ctx.path('sd15'))!r})",
            ],  # fmt: skip
        ),
        Step(
            "sd15-export-fp16",
            "fp16 bundle for GPU hosts: one profile up to batch 30, checks on CUDA, fp16 loop parity",
            min_s=120,
            cap_s=360,
            argv=lambda ctx: _export_argv(ctx, model(ctx), bundle(ctx)),
            result=lambda ctx: _manifest_summary(bundle(ctx)),
        ),
        Step(
            "unet-fp16",
            "one guided step, batch 1/8/30: torch eager, torch.compile, ORT CUDA IO binding, TensorRT",
            min_s=120,
            cap_s=330,
            argv=lambda ctx: _bench(
                ctx,
                "unet.py",
                "--bundle",
                str(bundle(ctx)),
                "--dtype",
                "float16",
                "--images",
                "1,8,30",
                "--backends",
                "torch,onnx,tensorrt,compile",
                "--reps",
                "5",
                "--calls",
                "5",
                "--json",
                str(ctx.path("unet-fp16.json")),
                "--deadline",
                _deadline_arg(ctx, 330),
            ),  # fmt: skip
            result=lambda ctx: read_json(ctx.path("unet-fp16.json")),
        ),
        Step(
            "generate-fp16",
            "end to end, batch 8/1/30 x 20/50 steps, PSNR against torch fp32",
            min_s=90,
            cap_s=330,
            argv=lambda ctx: _bench(
                ctx,
                "generate.py",
                "--model",
                str(model(ctx)),
                "--bundle",
                str(bundle(ctx)),
                "--dtype",
                "float16",
                "--batch-sizes",
                "8,1,30",
                "--steps-list",
                "20,50",
                "--backends",
                "torch,tensorrt,onnx,compile",
                "--reps",
                "3",
                "--no-rss",
                "--json",
                str(ctx.path("generate-fp16.json")),
                "--deadline",
                _deadline_arg(ctx, 330),
            ),  # fmt: skip
            result=lambda ctx: read_json(ctx.path("generate-fp16.json")),
        ),
        Step(
            "sdxl-unet-fp16",
            "SDXL base UNet (2.6B, random weights) at 1024x1024, one guided step, batch 1/4: eager, compile",
            min_s=90,
            cap_s=240,
            argv=lambda ctx: _bench(
                ctx,
                "unet.py",
                "--arch",
                "sdxl",
                "--dtype",
                "float16",
                "--images",
                "1,4",
                "--backends",
                "torch,compile",
                "--reps",
                "3",
                "--calls",
                "3",
                "--json",
                str(ctx.path("sdxl-unet-fp16.json")),
                "--deadline",
                _deadline_arg(ctx, 240),
            ),  # fmt: skip
            result=lambda ctx: read_json(ctx.path("sdxl-unet-fp16.json")),
        ),
        Step(
            "unet-fp32",
            "fp32 engines (TF32 off) and one guided step at batch 1/8: the costliest build, last",
            min_s=180,
            cap_s=330,
            argv=lambda ctx: _bench(
                ctx,
                "unet.py",
                "--bundle",
                str(bundle(ctx)),
                "--dtype",
                "float32",
                "--images",
                "1,8",
                "--backends",
                "torch,onnx,tensorrt",
                "--reps",
                "3",
                "--calls",
                "3",
                "--json",
                str(ctx.path("unet-fp32.json")),
                "--deadline",
                _deadline_arg(ctx, 330),
            ),  # fmt: skip
            result=lambda ctx: read_json(ctx.path("unet-fp32.json")),
        ),
    ]


def _export_argv(ctx: Context, model: Path, bundle: Path) -> list[str]:
    if (bundle / "bundle.json").is_file():  # made by an earlier run: verify it instead
        return [ctx.python, "-m", "t2i_audit", "--format", "json", "bundle-verify", str(bundle)]
    return [
        ctx.python, "-m", "t2i_audit", "--format", "json", "export", str(model), "--out", str(bundle),
        "--precision", "fp16", "--batch-sizes", "30", "--no-cpu-graphs", "--validate-on", "auto",
        "--parity-steps", "8",
    ]  # fmt: skip


def _manifest_summary(bundle: Path) -> dict | None:
    manifest = read_json(bundle / "bundle.json")
    if manifest is None:
        return None
    return {
        "parity_passed": manifest.get("parity_passed"),
        "components": {
            name: {"fp32": rec.get("parity"), "fp16": (rec.get("fp16") or {}).get("parity")}
            for name, rec in manifest.get("components", {}).items()
        },
        "fp16_loop_parity": manifest.get("fp16_loop_parity"),
    }


def _has_cuda(python: str) -> bool:
    """TensorRT and a CUDA device, asked of a child interpreter (keeps this process free of torch)."""
    code = "from auditor.backends.engines.trt import tensorrt_status; import sys; sys.exit(tensorrt_status() is not None)"
    try:
        return (
            subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, timeout=120).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def parse_args(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="the results (default gpu-check.json)")
    parser.add_argument("--workdir", default=".cache/gpu-check", help="models, bundles, engines, logs")
    parser.add_argument(
        "--budget-s", type=float, default=570.0, help="wall-clock budget from start (default 570)"
    )
    parser.add_argument("--only", help=f"comma-separated steps to run, of: {','.join(names)}")
    parser.add_argument("--skip", help="comma-separated steps to leave out")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    if args.budget_s <= RESERVE_S:
        parser.error(f"--budget-s {args.budget_s:g}: expected more than {RESERVE_S:g}")
    for option in ("only", "skip"):
        chosen = getattr(args, option)
        unknown = [n for n in (chosen or "").split(",") if n and n not in names]
        if unknown:
            parser.error(f"--{option}: unknown steps {unknown}; expected some of {names}")
    return args


def select(steps: list[Step], only: str | None, skip: str | None) -> list[Step]:
    keep = set(only.split(",")) if only else {s.name for s in steps}
    drop = set(skip.split(",")) if skip else set()
    return [s for s in steps if s.name in keep and s.name not in drop]


def main(argv: list[str] | None = None, steps: list[Step] | None = None) -> int:
    started = time.time()
    steps = steps if steps is not None else default_steps()
    args = parse_args(argv, [s.name for s in steps])
    chosen = select(steps, args.only, args.skip)
    if args.dry_run:
        for step in chosen:
            print(f"{step.name:18s} min {step.min_s:4.0f} s  cap {step.cap_s:4.0f} s  {step.description}")
        return 0
    ctx = Context(workdir=Path(args.workdir), out=Path(args.out), deadline=started + args.budget_s)
    ctx.cuda = _has_cuda(ctx.python)
    ctx.document = {
        "check": "t2i-auditor gpu-check",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "budget_s": args.budget_s,
        "cuda_with_tensorrt": ctx.cuda,
        "steps": {},
    }
    code = run_check(chosen, ctx)
    statuses = {name: rec.get("status") for name, rec in ctx.document["steps"].items()}
    print(json.dumps({"out": str(ctx.out), "seconds": round(time.time() - started, 1), "steps": statuses}))
    return code


if __name__ == "__main__":
    sys.exit(main())
