"""`make gpu-check`: what a lent GPU should tell us, in order of value, within 10 minutes from a cold start.

    python bench/gpu_check.py [--out gpu-check.json] [--workdir .cache/gpu-check]
                              [--budget-s 570] [--only STEP,...] [--skip STEP,...] [--dry-run]

Written for the host the project is most likely to be lent: a GPU with a CUDA build of torch
(2.11 or later, Triton with it) and no package index, where what gpu-check needs beyond torch
arrives as the wheels of `make gpu-wheels` (docs/benchmarks.md). No `make setup`, no venv: any
python that imports torch runs it, with this repository importable as it lies (the steps get
PYTHONPATH=<repo>). This process imports nothing but the standard library; what the host has is
asked of a child interpreter first (`probe`: torch, CUDA, the torch stack, onnx, onnxruntime-gpu,
TensorRT), and every step that needs something missing is skipped with the reason.

The plan (`default_steps`), most valuable first:

1. `torch-sd15`: bench/sd15_torch.py, needing only torch and the pure-Python stack: Stable
   Diffusion 1.5's architecture built in memory with random weights, batch 8 then 1: torch eager
   fp32 and fp16 and the torch-compiled backend in fp16 (SDPA, channels-last, CUDA graphs): ms per
   guided step, images/s end to end, fraction of the fp16 peak, PSNR against fp32;
2. `trt-smoke`: one TensorRT engine (the tiny UNet's fp16 graph) built, run and compared with
   torch (bench/unet.py --arch tiny), where tensorrt and onnx are installed;
3. `ort-cuda-smoke`: ONNX Runtime's CUDA provider with IO binding on the same graph, where
   onnxruntime-gpu is installed;
4. `sdxl-torch`: SDXL base's 2.6B-parameter UNet at 1024x1024, eager vs compiled fp16, batch 1;
5. `sd15-engines`: SD 1.5's UNet exported (fp16 graph) and run on ONNX Runtime CUDA and a
   TensorRT engine at batch 8, for the table's engine rows: the costliest step, last.

`gpu-tests` (pytest -m gpu: about 26 tiny TensorRT engines, minutes) is not in the default plan;
`--only gpu-tests` runs it on a longer lease.

A step starts only when at least its minimum time is left, and runs under a timeout of what is
left; a step that cannot start is recorded as skipped with the reason. The JSON (`--out`) is
rewritten after every step, and on SIGTERM or SIGINT the running step's process group is
stopped, the step marked "interrupted", its partial results kept (the benches rewrite their
own JSON after every configuration) and the file written before exiting 143. At the end it
prints one table (`summarize`): every configuration measured at SD 1.5 512x512, with ratios
against torch eager fp32 of this run, and the targets met or missed; the JSON holds it as
"table". Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad arguments.

Everything here is plain Python, tested on the CPU by tests/test_gpu_check.py (stand-in steps:
budget, timeouts, partial results, SIGTERM; the real plan on a CPU host: every GPU step skipped).
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESERVE_S = 10.0  # kept back for stopping a step and writing the JSON
EXIT_INTERRUPTED = 143
PROBE_TIMEOUT_S = 120.0
CAPABILITIES = ("torch", "cuda", "torch-stack", "onnx", "onnxruntime-gpu", "tensorrt", "pytest")
# What the torch steps import beyond torch, import name: distribution. `make gpu-wheels`
# (bench/gpu_wheels.py) bundles these distributions with their dependencies; the probe checks
# the names. rich: export/__init__ imports the exporter, which imports auditor.progress.
TORCH_STACK: dict[str, str] = {
    "numpy": "numpy",
    "PIL": "pillow",
    "pydantic": "pydantic",
    "rich": "rich",
    "diffusers": "diffusers",
    "transformers": "transformers",
}
# The targets the table checks, per guided step at SD 1.5 512x512 and TARGET_IMAGES images:
# (configuration, against, at least this ratio of their ms per guided step)
TARGET_IMAGES = 8
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("tensorrt-fp16", "eager-fp32", 2.5),
    ("tensorrt-fp16", "eager-fp16", 1.3),
    ("compiled-fp16", "eager-fp16", 1.3),
)


@dataclass
class Step:
    """One unit of the check: a command, the least time worth starting it with, its cap, and
    the capabilities (`probe`) it needs."""

    name: str
    description: str
    min_s: float
    cap_s: float
    argv: Callable[[Context], list[str]]
    result: Callable[[Context], dict | None] = lambda ctx: None
    needs: tuple[str, ...] = ("cuda",)
    default: bool = True  # in the plan unless --only names it


@dataclass
class Context:
    workdir: Path
    out: Path
    deadline: float  # time.time() by which every step must be over
    python: str = sys.executable
    # capability -> None when present, else why not (`probe`); a capability not listed is missing
    have: Mapping[str, str | None] = field(default_factory=dict)
    document: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.workdir / name


def decide(step: Step, remaining_s: float, have: Mapping[str, str | None]) -> tuple[float | None, str]:
    """(timeout, "") to run `step` with `remaining_s` left, or (None, why it is skipped)."""
    for need in step.needs:
        if need not in have or have[need] is not None:
            return None, f"skipped: {have.get(need) or f'{need} not available'}"
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


def child_env() -> dict[str, str]:
    """The steps' environment: this repository importable without installing it, no hub access."""
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ,
        PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


def run_step(step: Step, ctx: Context, timeout: float) -> dict:
    """Run one step's command in its own process group under `timeout`; its log goes to workdir."""
    log = ctx.path(f"{step.name}.log")
    record: dict = {"description": step.description, "timeout_s": round(timeout, 1)}
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        argv = step.argv(ctx)
        record["command"] = argv
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=child_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
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
            ctx.document["table"] = summarize(ctx.document)
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
            timeout, why = decide(step, ctx.deadline - time.time(), ctx.have)
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
        ctx.document["table"] = summarize(ctx.document)
        write_json(ctx.out, ctx.document)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code


# ---------------------------------------------------------------- what the host has

PROBE_CODE = """
import importlib.util, json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
have = {}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    have["torch"] = None
    have["cuda"] = None if torch.cuda.is_available() else "no CUDA device"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as exc:
    have["torch"] = have["cuda"] = "torch does not import in %s (%s)" % (sys.executable, type(exc).__name__)
found = lambda name: importlib.util.find_spec(name) is not None
missing = [dist for name, dist in STACK.items() if not found(name)]
have["torch-stack"] = "missing %s (the gpu-wheels bundle: docs/benchmarks.md)" % ", ".join(missing) if missing else None
info["triton"] = found("triton")
have["onnx"] = None if found("onnx") else "onnx not installed"
have["pytest"] = None if found("pytest") else "pytest not installed"
have["onnxruntime-gpu"] = "onnxruntime-gpu not installed"
if found("onnxruntime"):
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in info["ort_providers"]:
            have["onnxruntime-gpu"] = None
        else:
            have["onnxruntime-gpu"] = "onnxruntime-gpu not installed (onnxruntime lists no CUDAExecutionProvider)"
    except Exception as exc:
        have["onnxruntime-gpu"] = "onnxruntime does not import (%s)" % type(exc).__name__
have["tensorrt"] = "tensorrt not installed"
if found("tensorrt"):
    try:
        import tensorrt
        info["tensorrt"] = tensorrt.__version__
        have["tensorrt"] = None
    except Exception as exc:
        have["tensorrt"] = "tensorrt does not import (%s)" % type(exc).__name__
info["capabilities"] = have
json.dump(info, open(OUT, "w"), indent=2)
"""


def probe(python: str, workdir: Path) -> dict:
    """The host as `python` sees it: versions, the GPU, and `capabilities` (name -> None when
    present, else why not), asked of a child interpreter so that this process never imports torch."""
    out = workdir / "probe.json"
    out.unlink(missing_ok=True)
    code = f"OUT = {str(out)!r}\nSTACK = {TORCH_STACK!r}\n{PROBE_CODE}"
    try:
        done = subprocess.run(
            [python, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, timeout=PROBE_TIMEOUT_S
        )
        error = done.stderr.decode(errors="replace").strip().splitlines()[-1:] if done.returncode else []
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = [f"{type(exc).__name__}: {exc}"]
    info = read_json(out)
    if info is None:
        reason = f"the probe failed in {python}: {error[0] if error else 'no output'}"
        return {"capabilities": dict.fromkeys(CAPABILITIES, reason), "probe_error": reason}
    return info


# ---------------------------------------------------------------- the steps


def _bench(ctx: Context, script: str, *args: str) -> list[str]:
    return [ctx.python, str(ROOT / "bench" / script), *args]


def _deadline_arg(ctx: Context, step_cap: float) -> str:
    return str(min(ctx.deadline, time.time() + step_cap) - 30.0)


TORCH = ("torch", "torch-stack", "cuda")


def _bench_step(ctx: Context, script: str, name: str, fixed: str, cap_s: float, *extra: str) -> list[str]:
    """A bench script's command: its fixed options, then the JSON it writes (`<name>.json`, read
    back as the step's result) and the deadline it starts nothing after."""
    json_out = ["--json", str(ctx.path(f"{name}.json"))]
    return _bench(ctx, script, *fixed.split(), *extra, *json_out, "--deadline", _deadline_arg(ctx, cap_s))


def _measure(
    name: str, description: str, min_s: float, cap_s: float, needs, script: str, fixed: str, *, workdir=False
):
    """A step that runs a bench script and keeps the JSON it writes."""
    extra = (lambda ctx: ["--workdir", str(ctx.path(name))]) if workdir else (lambda ctx: [])
    return Step(
        name,
        description,
        min_s=min_s,
        cap_s=cap_s,
        needs=needs,
        argv=lambda ctx: _bench_step(ctx, script, name, fixed, cap_s, *extra(ctx)),
        result=lambda ctx: read_json(ctx.path(f"{name}.json")),
    )


def default_steps() -> list[Step]:
    """Every step, in order of value (module doc); `default=False` ones run only when --only names them."""
    tiny = "--arch tiny --dtype float16 --device cuda --images 1 --reps 2 --calls 3 --backends"
    return [
        _measure(
            "torch-sd15",
            "SD 1.5 size, random weights, batch 8 and 1: torch eager fp32 / fp16, torch-compiled fp16",
            150,
            390,
            TORCH,
            "sd15_torch.py",
            "--arch sd15 --images 8,1 --configs eager-fp32,eager-fp16,compiled-fp16 --steps 20 --reps 3 --calls 5",
        ),
        _measure(
            "trt-smoke",
            "one TensorRT engine (the tiny UNet's fp16 graph) built, run, compared with torch fp32",
            30,
            150,
            (*TORCH, "onnx", "tensorrt"),
            "unet.py",
            f"{tiny} torch,tensorrt",
            workdir=True,
        ),
        _measure(
            "ort-cuda-smoke",
            "ONNX Runtime CUDA with IO binding on the tiny UNet's fp16 graph, compared with torch fp32",
            30,
            150,
            (*TORCH, "onnx", "onnxruntime-gpu"),
            "unet.py",
            f"{tiny} torch,onnx",
            workdir=True,
        ),
        _measure(
            "sdxl-torch",
            "SDXL base UNet (2.6B, random weights) at 1024x1024, one guided step, batch 1: eager vs compiled fp16",
            120,
            240,
            TORCH,
            "unet.py",
            "--arch sdxl --dtype float16 --images 1 --backends torch,compile --reps 3 --calls 3",
        ),
        _measure(
            "sd15-engines",
            "SD 1.5 UNet's fp16 graph on ONNX Runtime CUDA and TensorRT, batch 8 (export and engine build)",
            300,
            480,
            (*TORCH, "onnx", "tensorrt"),
            "unet.py",
            "--arch sd15 --dtype float16 --images 8 --backends torch,onnx,tensorrt --reps 3 --calls 3",
            workdir=True,
        ),
        Step(
            "gpu-tests",
            "pytest -m gpu: the tensorrt conformance suite and tests/test_gpu.py (about 26 tiny engines)",
            min_s=200,
            cap_s=400,
            needs=(*TORCH, "pytest", "onnx", "tensorrt"),
            default=False,
            argv=lambda ctx: [
                ctx.python,
                *"-m pytest -q -m gpu -p no:cacheprovider tests".split(),
                f"--junitxml={ctx.path('gpu-tests.xml')}",
            ],
            result=lambda ctx: junit_summary(ctx.path("gpu-tests.xml")),
        ),
    ]


# ---------------------------------------------------------------- the table


def _step_result(document: dict, name: str) -> dict:
    return (document.get("steps", {}).get(name) or {}).get("result") or {}


def summarize(document: dict) -> dict:
    """The one table: each configuration measured at SD 1.5 512x512 (torch-sd15, sd15-engines),
    with ratios against torch eager fp32 at the same batch in this run, and the targets."""
    torch_doc, engines = _step_result(document, "torch-sd15"), _step_result(document, "sd15-engines")
    rows: list[dict] = []
    for entry in torch_doc.get("results", []):
        for name, rec in entry.get("configs", {}).items():
            if "ms_per_guided_step" in rec:
                rows.append({"config": name, "images": entry["images"]} | _pick(rec))
    for entry in engines.get("results", []):
        for name, rec in entry.get("backends", {}).items():
            if name in ("onnx", "tensorrt") and "ms_per_step" in rec:
                row = {"config": f"{name}-fp16", "images": entry["images"]} | _pick({})
                rows.append(
                    row
                    | {
                        "ms_per_guided_step": rec["ms_per_step"],
                        "fraction_of_peak": rec.get("fraction_of_peak"),
                    }
                )
    ms = {(r["config"], r["images"]): r["ms_per_guided_step"] for r in rows}
    ips = {(r["config"], r["images"]): r.get("images_per_s") for r in rows}
    for row in rows:
        key = ("eager-fp32", row["images"])
        row["speedup_vs_eager_fp32"] = ms[key] / row["ms_per_guided_step"] if key in ms else None
        base, mine = ips.get(key), row.get("images_per_s")
        row["images_per_s_vs_eager_fp32"] = mine / base if base and mine else None
    targets = []
    for config, against, floor in TARGETS:
        a, b = ms.get((config, TARGET_IMAGES)), ms.get((against, TARGET_IMAGES))
        ratio = b / a if a and b else None
        verdict = "not measured" if ratio is None else ("met" if ratio >= floor else "missed")
        targets.append(
            {"config": config, "against": against, "at_least": floor, "ratio": ratio, "verdict": verdict}
        )
    peak = torch_doc.get("peak_fp16_tflops") or engines.get("peak_fp16_tflops")
    return {
        "workload": f"SD 1.5 UNet at 512x512, random weights, one guided step = 2 x images rows; "
        f"end to end {torch_doc.get('steps', 20)} DDIM steps",
        "gpu": torch_doc.get("device") or engines.get("device") or document.get("env", {}).get("gpu"),
        "peak_fp16_tflops": peak or "unknown",
        "rows": rows,
        "targets": targets,
    }


def _pick(rec: dict) -> dict:
    keys = ("ms_per_guided_step", "images_per_s", "fraction_of_peak", "psnr_vs_fp32_db", "first_call_s")
    return {k: rec.get(k) for k in keys}


def format_table(table: dict) -> str:
    """The table as text (what `make gpu-check` prints last)."""

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    peak = table["peak_fp16_tflops"]
    lines = [
        f"{table['workload']}; GPU {table['gpu'] or 'none'}, dense fp16 peak "
        + (f"{peak:g} TFLOP/s" if isinstance(peak, (int, float)) else str(peak)),
        f"{'config':15s} {'images':>6s} {'ms/step':>9s} {'x fp32':>7s} {'images/s':>9s} {'x fp32':>7s}"
        f" {'of peak':>8s} {'PSNR dB':>8s}",
    ]
    for r in table["rows"]:
        lines.append(
            f"{r['config']:15s} {r['images']:6d} {num(r['ms_per_guided_step'], '9.2f')}"
            f" {num(r['speedup_vs_eager_fp32'], '7.2f')} {num(r.get('images_per_s'), '9.3f')}"
            f" {num(r['images_per_s_vs_eager_fp32'], '7.2f')} {num(r.get('fraction_of_peak'), '8.1%')}"
            f" {num(r.get('psnr_vs_fp32_db'), '8.1f')}"
        )
    if not table["rows"]:
        lines.append("(nothing measured)")
    for t in table["targets"]:
        ratio = "" if t["ratio"] is None else f" ({t['ratio']:.2f}x)"
        lines.append(
            f"target at batch {TARGET_IMAGES}: {t['config']} >= {t['at_least']}x {t['against']}: {t['verdict']}{ratio}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="the results (default gpu-check.json)")
    parser.add_argument("--workdir", default=".cache/gpu-check", help="graphs, engines, logs")
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
    keep = set(only.split(",")) if only else {s.name for s in steps if s.default}
    drop = set(skip.split(",")) if skip else set()
    return [s for s in steps if s.name in keep and s.name not in drop]


def main(argv: list[str] | None = None, steps: list[Step] | None = None) -> int:
    started = time.time()
    steps = steps if steps is not None else default_steps()
    args = parse_args(argv, [s.name for s in steps])
    chosen = select(steps, args.only, args.skip)
    if args.dry_run:
        for step in chosen:
            print(
                f"{step.name:15s} min {step.min_s:4.0f} s  cap {step.cap_s:4.0f} s"
                f"  needs {','.join(step.needs):45s} {step.description}"
            )
        return 0
    ctx = Context(workdir=Path(args.workdir), out=Path(args.out), deadline=started + args.budget_s)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    env = probe(ctx.python, ctx.workdir)
    ctx.have = env.get("capabilities", {})
    ctx.document = {
        "check": "t2i-auditor gpu-check",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "budget_s": args.budget_s,
        "env": env,
        "steps": {},
    }
    code = run_check(chosen, ctx)
    print(format_table(ctx.document["table"]))
    statuses = {
        name: rec.get("status")
        + (f" ({rec['reason'].removeprefix('skipped: ')})" if rec.get("reason") else "")
        for name, rec in ctx.document["steps"].items()
    }
    print(
        json.dumps(
            {"out": str(ctx.out), "seconds": round(time.time() - started, 1), "steps": statuses}, indent=1
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
