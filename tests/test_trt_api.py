"""The TensorRT names auditor/backends/engines/trt.py uses: listed, not among those TensorRT 11 removed, present when installed.

No CPU host can build an engine, so this is what keeps the TensorRT path honest between
GPU sessions: `TENSORRT_API` must list every `trt.` name the module touches (checked
from its syntax tree), none of them may be one that TensorRT 11 removed (NVIDIA's
10.x-to-11.x migration guide: the weak-typing precision flags, implicit-batch and
binding-index APIs, calibrators), and where `tensorrt` imports every listed name must
resolve on the real bindings.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

import pytest

from auditor.backends.engines.trt import TENSORRT_API

TRT_SOURCE = Path(__file__).resolve().parents[1] / "auditor" / "backends" / "engines" / "trt.py"
ENGINE_SOURCES = sorted(TRT_SOURCE.parent.glob("*.py"))

# Removed in TensorRT 11 (Python API), from NVIDIA's migration guide; a subset that code
# like ours could plausibly reach for.
REMOVED_IN_TENSORRT_11 = {
    "BuilderFlag.FP16",
    "BuilderFlag.INT8",
    "BuilderFlag.BF16",
    "BuilderFlag.FP8",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "BuilderFlag.DIRECT_IO",
    "IBuilderConfig.int8_calibrator",
    "IBuilderConfig.set_quantization_flag",
    "ICudaEngine.device_memory_size",
    "Builder.platform_has_fast_fp16",
    "Builder.platform_has_fast_int8",
    "ILayer.precision",
    "ILayer.set_output_type",
    "ILayer.reset_precision",
    "IExecutionContext.execute_async_v2",
    "IExecutionContext.execute_v2",
    "ICudaEngine.get_binding_index",
    "ICudaEngine.num_bindings",
}


def _trt_chains(tree: ast.AST) -> set[str]:
    """Dotted attribute paths rooted at the name `trt` (e.g. "BuilderFlag.TF32")."""
    chains: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parts, current = [], node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id == "trt":
            chains.add(".".join(reversed(parts)))
    # keep the longest chains only ("Logger" is a prefix of "Logger.WARNING")
    return {c for c in chains if not any(o != c and o.startswith(c + ".") for o in chains)}


def _attribute_names(tree: ast.AST) -> set[str]:
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def test_every_trt_name_the_module_uses_is_listed():
    tree = ast.parse(TRT_SOURCE.read_text(encoding="utf-8"))
    classes_and_members = {name.split(".")[0] for name in TENSORRT_API} | set(TENSORRT_API)
    unlisted = {chain for chain in _trt_chains(tree) if chain not in classes_and_members}
    assert not unlisted, f"add these to TENSORRT_API: {sorted(unlisted)}"
    # and the list does not rot: every listed member is named somewhere in the module
    used = _attribute_names(tree)
    stale = [name for name in TENSORRT_API if name.split(".")[-1] not in used]
    assert not stale, f"listed but unused: {stale}"


def test_no_name_removed_in_tensorrt_11_is_used():
    assert not set(TENSORRT_API) & REMOVED_IN_TENSORRT_11
    used = _attribute_names(ast.parse(TRT_SOURCE.read_text(encoding="utf-8")))
    removed_members = {name.split(".")[-1] for name in REMOVED_IN_TENSORRT_11}
    assert not used & removed_members, sorted(used & removed_members)


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None,
    reason="tensorrt is not installed (GPU image: pip install 't2i-auditor[gpu]')",
)
def test_every_listed_name_resolves_on_the_installed_bindings():
    import tensorrt

    missing = []
    for name in TENSORRT_API:
        try:
            functools.reduce(getattr, name.split("."), tensorrt)
        except AttributeError:
            missing.append(name)
    assert not missing, f"TensorRT {tensorrt.__version__} lacks {missing}"


def test_only_trt_py_touches_tensorrt_names():
    """The API list covers every TensorRT call: no other engine module names `trt.` anything."""
    others = {p.name: _trt_chains(ast.parse(p.read_text(encoding="utf-8"))) for p in ENGINE_SOURCES}
    others.pop("trt.py")
    assert not any(others.values()), others


def test_one_logger_and_it_never_writes_to_stdout():
    """TensorRT's default Logger prints to stdout, which carries `--format json`: the module must not make one."""
    tree = ast.parse(TRT_SOURCE.read_text(encoding="utf-8"))
    assert "Logger" not in {chain.split(".")[0] for chain in _trt_chains(tree)}
    callers = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(c, ast.Call) and getattr(c.func, "id", None) == "trt_logger" for c in ast.walk(node)
        )
    }
    assert {"build_engine", "__init__"} <= callers  # the builder and TrtEngine's runtime share it


class _FakeILogger:
    """The shape of tensorrt.ILogger the bindings document: subclasses call ILogger.__init__ and override log."""

    initialised = 0

    def __init__(self):
        _FakeILogger.initialised += 1


def test_logger_routes_warnings_to_stderr_and_drops_info(monkeypatch, capsys):
    import sys
    import types

    from auditor.backends.engines import trt

    fake = types.ModuleType("tensorrt")
    fake.ILogger = _FakeILogger
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt, "_LOGGER", None)
    monkeypatch.delenv("T2I_AUDITOR_TRT_LOG", raising=False)
    logger = trt.trt_logger()
    assert trt.trt_logger() is logger and _FakeILogger.initialised == 1  # one per process
    logger.log(2, "Using default stream in enqueueV3()")  # WARNING
    logger.log(1, "engine failed")  # ERROR
    logger.log(3, "[MemUsageChange] Init CUDA")  # INFO
    logger.log(4, "verbose detail")
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "tensorrt warning: Using default stream in enqueueV3()",
        "tensorrt error: engine failed",
    ]
    monkeypatch.setenv("T2I_AUDITOR_TRT_LOG", "info")
    logger.log(3, "now shown")
    assert capsys.readouterr().err == "tensorrt info: now shown\n"
