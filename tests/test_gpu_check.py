"""`make gpu-check`'s CPU parts: arguments, the time budget, skipping, timeouts, the JSON, SIGTERM,
the probe of what the host has, the table; and its first step's bench on the tiny model.

The steps themselves need a CUDA host; here they are stand-in commands (small Python processes
that write results and sleep), run by the real orchestrator, and the real plan on this CPU host,
where every step is skipped with its reason."""

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


def _step(name: str, code: str, *, min_s: float = 1, cap_s: float = 60, result: str | None = None, needs=()):
    return gc.Step(
        name,
        f"stand-in {name}",
        min_s=min_s,
        cap_s=cap_s,
        argv=_py(code),
        result=(lambda ctx: gc.read_json(ctx.workdir / result)) if result else (lambda ctx: None),
        needs=needs,
    )


def test_decide_skips_without_a_capability_or_time_and_caps_the_timeout():
    step = gc.Step("x", "x", min_s=100, cap_s=300, argv=lambda ctx: [], needs=("cuda", "tensorrt"))
    gpu = {"cuda": None, "tensorrt": None}
    assert gc.decide(step, 1000, {"cuda": "no CUDA device"}) == (None, "skipped: no CUDA device")
    assert gc.decide(step, 1000, {"cuda": None, "tensorrt": "tensorrt not installed"}) == (
        None,
        "skipped: tensorrt not installed",
    )
    assert gc.decide(step, 1000, {"cuda": None}) == (None, "skipped: tensorrt not available")
    timeout, why = gc.decide(step, 50, gpu)
    assert timeout is None and "time ran short" in why and "needs at least 100 s" in why
    assert gc.decide(step, 1000, gpu) == (300, "")
    assert gc.decide(step, 200, gpu) == (200 - gc.RESERVE_S, "")


def test_default_plan_runs_torch_alone_first_and_engines_only_where_installed():
    steps = {s.name: s for s in gc.default_steps()}
    assert [s.name for s in gc.select(list(steps.values()), None, None)] == [
        "torch-sd15", "trt-smoke", "ort-cuda-smoke", "sdxl-torch", "sd15-engines",
    ]  # fmt: skip
    assert not steps["gpu-tests"].default  # 26 tiny engines: only with --only gpu-tests
    assert steps["torch-sd15"].needs == steps["sdxl-torch"].needs == ("torch", "torch-stack", "cuda")
    assert "tensorrt" in steps["trt-smoke"].needs and "onnxruntime-gpu" in steps["ort-cuda-smoke"].needs
    assert {"onnx", "tensorrt"} <= set(steps["sd15-engines"].needs)
    ctx = gc.Context(workdir=Path("/w"), out=Path("/o.json"), deadline=time.time() + 570)
    first = steps["torch-sd15"].argv(ctx)
    assert first[1].endswith("sd15_torch.py") and first[first.index("--arch") + 1] == "sd15"
    assert first[first.index("--images") + 1] == "8,1"
    assert first[first.index("--configs") + 1] == "eager-fp32,eager-fp16,compiled-fp16"
    trt = steps["trt-smoke"].argv(ctx)  # one engine: the tiny UNet's fp16 graph
    assert trt[trt.index("--arch") + 1] == "tiny" and trt[trt.index("--backends") + 1] == "torch,tensorrt"
    assert trt[trt.index("--images") + 1] == "1"
    engines = steps["sd15-engines"].argv(ctx)
    assert (
        engines[engines.index("--images") + 1] == "8" and engines[engines.index("--dtype") + 1] == "float16"
    )


def test_the_orchestrator_imports_nothing_but_the_standard_library():
    code = (
        f"import sys; before = set(sys.modules); sys.path.insert(0, {str(BENCH)!r}); import gpu_check; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['gpu_check']"


def test_arguments_are_checked(capsys):
    names = ["torch-sd15", "sd15-engines"]
    with pytest.raises(SystemExit) as caught:
        gc.parse_args(["--only", "torch-sd15,nope"], names)
    assert caught.value.code == 2 and "unknown steps ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.parse_args(["--budget-s", "5"], names)
    steps = gc.default_steps()
    assert [s.name for s in gc.select(steps, "sd15-engines,torch-sd15", None)] == [
        "torch-sd15",
        "sd15-engines",
    ]
    assert [s.name for s in gc.select(steps, "gpu-tests", None)] == ["gpu-tests"]
    assert "sd15-engines" not in [s.name for s in gc.select(steps, None, "sd15-engines")]
    assert gc.main(["--dry-run", "--skip", "sd15-engines"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("torch-sd15") and "sd15-engines" not in out


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
        _step("gpu", "pass", needs=("cuda",)),
    ]
    ctx = gc.Context(workdir=tmp_path / "work", out=tmp_path / "out.json", deadline=time.time() + 120)
    ctx.have = {"cuda": "no CUDA device"}
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
    gc.Step("first", "", 1, 60, lambda ctx: [sys.executable, "-c", "print('done')"], needs=()),
    gc.Step("hang", "", 1, 600, lambda ctx: [sys.executable, "-c",
        "import os, time, json; json.dump({{'partial': True}}, open(%r, 'w')); "
        "open(%r, 'w').write(str(os.getpid())); time.sleep(600)" % (work + '/hang.json', work + '/hang.pid')],
        result=lambda ctx: gc.read_json(ctx.workdir / "hang.json"), needs=()),
    gc.Step("never", "", 1, 60, lambda ctx: [sys.executable, "-c", "pass"], needs=()),
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


def test_on_a_cpu_host_it_probes_the_host_and_skips_every_gpu_step_with_its_reason(tmp_path, capsys):
    """What `make gpu-check` does here: the real plan, no GPU: each step says why not, exit 0."""
    out = tmp_path / "gpu-check.json"
    assert gc.main(["--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    doc = json.loads(out.read_text())
    env = doc["env"]
    assert (
        env["torch"] and env["capabilities"]["torch"] is None and env["capabilities"]["torch-stack"] is None
    )
    assert env["capabilities"]["cuda"] == "no CUDA device"
    assert doc["plan"] == [s.name for s in gc.default_steps() if s.default]
    for name in doc["plan"]:
        assert doc["steps"][name] == {
            "description": doc["steps"][name]["description"],
            "status": "skipped",
            "reason": "skipped: no CUDA device",
        }
    assert doc["table"]["rows"] == [] and {t["verdict"] for t in doc["table"]["targets"]} == {"not measured"}
    printed = capsys.readouterr().out
    assert "(nothing measured)" in printed and "compiled-fp16 >= 1.3x eager-fp16: not measured" in printed


def test_a_python_without_torch_is_a_reason_too(tmp_path):
    env = gc.probe(str(tmp_path / "no-such-python"), tmp_path)
    assert env["capabilities"]["cuda"].startswith("the probe failed in")
    step = gc.default_steps()[0]
    assert gc.decide(step, 600, env["capabilities"])[1].startswith("skipped: the probe failed")


def test_the_first_step_runs_on_the_cpu_and_fills_the_table(tmp_path, capsys):
    """bench/sd15_torch.py on the tiny model (the same code as at SD 1.5 size on a GPU), eager only
    (compiling is tests/test_torch_compiled.py's), and the table gpu-check makes of its JSON."""
    spec = importlib.util.spec_from_file_location("bench_sd15_torch", BENCH / "sd15_torch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = tmp_path / "torch-sd15.json"
    argv = ["--arch", "tiny", "--device", "cpu", "--images", "2", "--configs", "eager-fp32,eager-fp16"]
    assert bench.main([*argv, "--steps", "2", "--reps", "1", "--calls", "1", "--json", str(result)]) == 0
    measured = json.loads(result.read_text())
    assert measured["gflop_per_guided_step_per_image"] > 0 and measured["tf32"] is False
    rows = measured["results"][0]["configs"]
    assert rows["eager-fp32"]["psnr_vs_fp32_db"] == 100.0 and rows["eager-fp16"]["psnr_vs_fp32_db"] > 30
    assert rows["eager-fp16"]["graphs_compiled"] == 0
    table = gc.summarize({"steps": {"torch-sd15": {"result": measured}}})
    assert [(r["config"], r["images"]) for r in table["rows"]] == [("eager-fp32", 2), ("eager-fp16", 2)]
    assert table["rows"][0]["speedup_vs_eager_fp32"] == 1.0 and table["peak_fp16_tflops"] == "unknown"
    assert "eager-fp16" in gc.format_table(table)


def test_the_table_takes_ratios_against_eager_fp32_of_the_same_run_and_checks_the_targets():
    torch_sd15 = {
        "device": "NVIDIA H100 80GB HBM3",
        "peak_fp16_tflops": 989.4,
        "steps": 20,
        "results": [
            {
                "images": 8,
                "configs": {
                    "eager-fp32": {
                        "ms_per_guided_step": 300.0,
                        "images_per_s": 1.0,
                        "psnr_vs_fp32_db": 100.0,
                    },
                    "eager-fp16": {"ms_per_guided_step": 60.0, "images_per_s": 4.0, "psnr_vs_fp32_db": 45.0},
                    "compiled-fp16": {"ms_per_guided_step": 50.0, "images_per_s": 5.0},
                },
            },
            {"images": 1, "configs": {"eager-fp32": {"skipped": "deadline reached"}}},
        ],
    }
    engines = {"results": [{"images": 8, "backends": {"tensorrt": {"ms_per_step": 40.0}, "torch": {}}}]}
    table = gc.summarize(
        {"steps": {"torch-sd15": {"result": torch_sd15}, "sd15-engines": {"result": engines}}}
    )
    rows = {r["config"]: r for r in table["rows"]}
    assert set(rows) == {"eager-fp32", "eager-fp16", "compiled-fp16", "tensorrt-fp16"}
    assert (
        rows["eager-fp16"]["speedup_vs_eager_fp32"] == 5.0
        and rows["compiled-fp16"]["images_per_s_vs_eager_fp32"] == 5.0
    )
    assert (
        rows["tensorrt-fp16"]["speedup_vs_eager_fp32"] == 7.5
        and rows["tensorrt-fp16"]["images_per_s"] is None
    )
    verdicts = [(t["config"], t["against"], t["verdict"]) for t in table["targets"]]
    assert verdicts == [
        ("tensorrt-fp16", "eager-fp32", "met"),  # 7.5x >= 2.5x
        ("tensorrt-fp16", "eager-fp16", "met"),  # 1.5x >= 1.3x
        ("compiled-fp16", "eager-fp16", "missed"),  # 1.2x < 1.3x
    ]
    text = gc.format_table(table)
    assert "989.4 TFLOP/s" in text and "compiled-fp16 >= 1.3x eager-fp16: missed (1.20x)" in text


def _wheels():
    spec = importlib.util.spec_from_file_location("bench_gpu_wheels", BENCH / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wheel_bundle_takes_the_lock_pins_and_fails_over_its_limit(tmp_path, monkeypatch, capsys):
    """`make gpu-wheels` without the network: pip download stood in by a writer of fake wheels."""
    wheels = _wheels()
    assert wheels.torch_stack() == gc.TORCH_STACK
    locked = wheels.pins(BENCH.parent / "constraints.txt", list(gc.TORCH_STACK.values()))
    assert all("==" in pin for pin in locked), locked  # every distribution of the bundle is in the lock
    lock = tmp_path / "constraints.txt"
    lock.write_text("# a comment\nPillow==13.0.0\nfoo_bar==1.2\n")
    assert wheels.pins(lock, ["pillow", "foo-bar", "baz"]) == ["pillow==13.0.0", "foo-bar==1.2", "baz"]
    calls = []

    def download(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        (dest / "big-1.0-py3-none-any.whl").write_bytes(b"0" * 3 * 2**20)
        (dest / "small-1.0-py3-none-any.whl").write_bytes(b"0" * 2**20)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(wheels.subprocess, "run", download)
    out = tmp_path / "bundle"
    assert wheels.main(["--out", str(out), "--constraints", str(lock), "--max-mib", "4"]) == 0
    command = calls[0]
    assert command[command.index("--python-version") + 1] == "3.11" and "--only-binary=:all:" in command
    assert command[command.index("--abi") + 1] == "cp311" and "manylinux_2_28_x86_64" in command
    assert command[command.index("-c") + 1] == str(lock) and "pillow==13.0.0" in command
    assert "pillow==13.0.0" in (out / "requirements.txt").read_text().splitlines()
    printed = capsys.readouterr().out
    assert "3.00 MiB  big-1.0-py3-none-any.whl" in printed and "4.00 MiB  total, 2 wheels: fits" in printed
    assert wheels.main(["--out", str(out), "--constraints", str(lock), "--max-mib", "3.5"]) == 1
    assert "OVER the 3.5 MiB limit" in capsys.readouterr().out
