"""`make gpu-check`'s CPU parts: arguments, the time budget, skipping, timeouts, the JSON, SIGTERM.

The steps themselves need a CUDA host with TensorRT; here they are stand-in commands (small
Python processes that write results and sleep), run by the real orchestrator."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


def _py(code: str):
    return lambda ctx: [sys.executable, "-c", code.replace("WORK", repr(str(ctx.workdir)))]


def _step(
    name: str, code: str, *, min_s: float = 1, cap_s: float = 60, result: str | None = None, cuda=False
):
    return gc.Step(
        name,
        f"stand-in {name}",
        min_s=min_s,
        cap_s=cap_s,
        argv=_py(code),
        result=(lambda ctx: gc.read_json(ctx.workdir / result)) if result else (lambda ctx: None),
        needs_cuda=cuda,
    )


def test_decide_skips_without_cuda_or_time_and_caps_the_timeout():
    step = gc.Step("x", "x", min_s=100, cap_s=300, argv=lambda ctx: [])
    assert gc.decide(step, 1000, cuda=False) == (None, "skipped: no CUDA device with TensorRT here")
    timeout, why = gc.decide(step, 50, cuda=True)
    assert timeout is None and "time ran short" in why and "needs at least 100 s" in why
    assert gc.decide(step, 1000, cuda=True) == (300, "")
    assert gc.decide(step, 200, cuda=True) == (200 - gc.RESERVE_S, "")


def test_default_plan_runs_in_order_of_value_with_fp32_engines_last():
    names = [s.name for s in gc.default_steps()]
    assert names == [
        "env", "gpu-tests", "sd15-pipeline", "sd15-export-fp16", "unet-fp16", "generate-fp16",
        "sdxl-unet-fp16", "unet-fp32",
    ]  # fmt: skip
    steps = {s.name: s for s in gc.default_steps()}
    assert not steps["env"].needs_cuda and all(s.needs_cuda for n, s in steps.items() if n != "env")
    ctx = gc.Context(workdir=Path("/w"), out=Path("/o.json"), deadline=time.time() + 570)
    unet = steps["unet-fp16"].argv(ctx)
    assert "--images" in unet and unet[unet.index("--images") + 1] == "1,8,30"
    assert unet[unet.index("--backends") + 1] == "torch,onnx,tensorrt,compile"
    gen = steps["generate-fp16"].argv(ctx)
    assert gen[gen.index("--batch-sizes") + 1] == "8,1,30" and gen[gen.index("--steps-list") + 1] == "20,50"
    export = steps["sd15-export-fp16"].argv(ctx)
    assert {"--no-cpu-graphs", "--precision", "fp16"} <= set(export)
    sdxl = steps["sdxl-unet-fp16"].argv(ctx)
    assert sdxl[sdxl.index("--arch") + 1] == "sdxl" and sdxl[sdxl.index("--dtype") + 1] == "float16"
    assert sdxl[sdxl.index("--backends") + 1] == "torch,compile"


def test_arguments_are_checked(capsys):
    names = ["env", "unet-fp16"]
    with pytest.raises(SystemExit) as caught:
        gc.parse_args(["--only", "env,nope"], names)
    assert caught.value.code == 2 and "unknown steps ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.parse_args(["--budget-s", "5"], names)
    steps = gc.default_steps()
    assert [s.name for s in gc.select(steps, "env,unet-fp16", None)] == ["env", "unet-fp16"]
    assert "unet-fp32" not in [s.name for s in gc.select(steps, None, "unet-fp32")]
    assert gc.main(["--dry-run", "--skip", "unet-fp32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("env") and "unet-fp32" not in out


def test_budget_timeouts_skips_and_partial_results(tmp_path):
    """A passing step, one that overruns its timeout (its partial JSON kept), one that cannot start."""
    steps = [
        _step(
            "quick", "import json; json.dump({'ok': 1}, open(WORK + '/quick.json', 'w'))", result="quick.json"
        ),
        _step(
            "slow",
            "import json, time\n"
            "json.dump({'results': ['batch 1']}, open(WORK + '/slow.json', 'w'))\n"
            "time.sleep(60)\n"
            "json.dump({'results': ['batch 1', 'batch 8']}, open(WORK + '/slow.json', 'w'))",
            cap_s=3,
            result="slow.json",
        ),
        _step("late", "pass", min_s=3600),
        _step("gpu", "pass", cuda=True),
    ]
    ctx = gc.Context(workdir=tmp_path / "work", out=tmp_path / "out.json", deadline=time.time() + 120)
    start = time.monotonic()
    assert gc.run_check(steps, ctx) == 1  # a step that timed out did not pass
    assert time.monotonic() - start < 30  # the 60 s sleeper was stopped at its 3 s cap
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["plan"] == ["quick", "slow", "late", "gpu"] and doc["finished"]
    assert doc["steps"]["quick"]["status"] == "passed" and doc["steps"]["quick"]["result"] == {"ok": 1}
    assert doc["steps"]["slow"]["status"] == "timeout" and doc["steps"]["slow"]["result"] == {
        "results": ["batch 1"]
    }
    assert doc["steps"]["late"]["status"] == "skipped" and "time ran short" in doc["steps"]["late"]["reason"]
    assert doc["steps"]["gpu"]["status"] == "skipped" and "no CUDA" in doc["steps"]["gpu"]["reason"]


RUNNER = """
import sys, time
sys.path.insert(0, {bench!r})
import gpu_check as gc
work = {work!r}
steps = [
    gc.Step("first", "", 1, 60, lambda ctx: [sys.executable, "-c", "print('done')"], needs_cuda=False),
    gc.Step("hang", "", 1, 600, lambda ctx: [sys.executable, "-c",
        "import os, time, json; json.dump({{'partial': True}}, open(%r, 'w')); "
        "open(%r, 'w').write(str(os.getpid())); time.sleep(600)" % (work + '/hang.json', work + '/hang.pid')],
        result=lambda ctx: gc.read_json(ctx.workdir / "hang.json"), needs_cuda=False),
    gc.Step("never", "", 1, 60, lambda ctx: [sys.executable, "-c", "pass"], needs_cuda=False),
]
sys.exit(gc.main(["--out", {out!r}, "--workdir", work, "--budget-s", "300"], steps=steps))
"""


def test_sigterm_stops_the_step_and_writes_what_was_measured(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out.json"
    code = RUNNER.format(bench=str(BENCH), work=str(work), out=str(out))
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=BENCH.parent)
    pid_file = work / "hang.pid"
    deadline = time.time() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None, "the hanging step never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == gc.EXIT_INTERRUPTED
    doc = json.loads(out.read_text())
    assert doc["interrupted"] == "SIGTERM"
    assert doc["steps"]["first"]["status"] == "passed"
    assert doc["steps"]["hang"]["status"] == "interrupted" and doc["steps"]["hang"]["result"] == {
        "partial": True
    }
    assert doc["steps"]["never"]["status"] == "skipped"
    with pytest.raises(ProcessLookupError):  # the step's process was stopped too
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)


def test_junit_summary(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_x" name="ok"/>'
        '<testcase classname="tests.test_x" name="bad"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_x" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    assert gc.junit_summary(xml) == {
        "tests": 3, "failures": 1, "errors": 0, "skipped": 1, "failed": ["tests.test_x::bad"],
    }  # fmt: skip
    assert gc.junit_summary(tmp_path / "missing.xml") is None


def test_on_a_cpu_host_it_records_the_environment_and_skips_the_gpu_steps(tmp_path):
    """What `make gpu-check` does here: the real default steps, no GPU: env runs, the rest say why not."""
    out = tmp_path / "gpu-check.json"
    assert gc.main(["--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    doc = json.loads(out.read_text())
    assert doc["cuda_with_tensorrt"] is False
    env = doc["steps"]["env"]
    assert env["status"] == "passed" and env["result"]["cuda_available"] is False and env["result"]["torch"]
    for name in (
        "gpu-tests",
        "sd15-export-fp16",
        "unet-fp16",
        "generate-fp16",
        "sdxl-unet-fp16",
        "unet-fp32",
    ):
        assert doc["steps"][name]["status"] == "skipped", name
        assert "no CUDA device" in doc["steps"][name]["reason"]
