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


# ---------------------------------------------------------------- a stand-in TensorRT: the run path


class FakeTensors:
    """Buffers by address (what TensorRT sees of a torch tensor), shared by FakeOps and the fake engine."""

    def __init__(self) -> None:
        self.by_address: dict[int, object] = {}


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle

    def wait_stream(self, other) -> None:
        pass


class FakeGraph:
    def __init__(self) -> None:
        self.work: list = []


class FakeOps:
    """trt.CudaOps on the CPU: CPU tensors registered by address, streams, and CUDA graphs that record
    the engine's launches while capturing and run them on replay."""

    def __init__(self, tensors: FakeTensors, fail_capture: bool = False) -> None:
        self.tensors = tensors
        self.fail_capture = fail_capture
        self.capturing: FakeGraph | None = None
        self.replays = 0
        self.streams = 0

    def scope(self):
        import contextlib

        return contextlib.nullcontext()

    def new_stream(self):
        self.streams += 1
        return FakeStream(100 + self.streams)

    def current_stream(self):
        return FakeStream(0)

    def handle(self, stream) -> int:
        return stream.cuda_stream

    def on(self, stream):
        import contextlib

        return contextlib.nullcontext()

    def empty(self, shape, dtype):
        import torch

        tensor = (
            torch.full(shape, float("nan"), dtype=dtype) if dtype.is_floating_point else torch.empty(shape)
        )
        self.tensors.by_address[tensor.data_ptr()] = tensor
        return tensor

    def new_graph(self):
        return FakeGraph()

    def capture(self, graph, stream):
        import contextlib

        @contextlib.contextmanager
        def capturing():
            self.capturing = graph
            try:
                yield
            finally:
                self.capturing = None
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

        return capturing()

    def replay(self, graph, stream) -> None:
        self.replays += 1
        for work in graph.work:
            work()

    def synchronize(self, stream) -> None:
        pass


class FakeContext:
    """An IExecutionContext of the fake engine: y = x + t[:, None] over the rows of the shape set."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.profile = None
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple] = []
        self.executed = 0

    def set_optimization_profile_async(self, profile, stream):
        self.calls.append(("set_optimization_profile_async", profile))
        if self.engine.refuse == "set_optimization_profile_async":
            raise RuntimeError("Error in set optimization profile async.")  # what the bindings do
        self.profile = profile
        return True

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        low, _, high = self.engine.profiles[self.profile][name]
        inside = all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True))
        if self.engine.refuse == "set_input_shape" or not inside:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        if self.engine.refuse == "set_tensor_address" and name == "y":
            return False
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["x"][0], 3) if name == "y" else self.shapes[name]

    def execute_async_v3(self, stream):
        if self.engine.refuse == "execute_async_v3":
            return False
        if self.engine.ops.capturing is not None:
            self.engine.ops.capturing.work.append(self._compute)  # recorded, not run
        else:
            self._compute()
        return True

    def _compute(self):
        self.executed += 1
        rows = self.shapes["x"][0]
        get = self.engine.tensors.by_address
        x, t, y = (get[self.addresses[n]] for n in ("x", "t", "y"))
        y[:rows].copy_(x[:rows] + t[:rows, None])


class FakeEngine:
    """An ICudaEngine with inputs x (rows, 3), t (rows,) and output y (rows, 3), one profile per row count."""

    def __init__(self, tensors: FakeTensors, ops: FakeOps, profile_rows, static=True, refuse=None) -> None:
        self.tensors, self.ops, self.refuse = tensors, ops, refuse
        self.profiles = [
            {
                name: ((rows if static else 1, *tail), (rows, *tail), (rows, *tail))
                for name, tail in (("x", (3,)), ("t", ()))
            }
            for rows in profile_rows
        ]
        self.contexts: list[FakeContext] = []
        self.num_io_tensors = 3
        self.num_optimization_profiles = len(self.profiles)

    def get_tensor_name(self, i):
        return ("x", "t", "y")[i]

    def get_tensor_mode(self, name):
        return "out" if name == "y" else "in"

    def get_tensor_dtype(self, name):
        return "f32"

    def get_tensor_profile_shape(self, name, k):
        return self.profiles[k][name]

    def create_execution_context(self):
        if self.refuse == "create_execution_context":
            return None
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def _fake_tensorrt(monkeypatch, engine: FakeEngine | None):
    """A `tensorrt` module whose Runtime deserializes every plan into `engine` (None: a failed plan)."""
    import sys
    import types

    from auditor.backends.engines import trt

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0"
    fake.ILogger = _FakeILogger
    fake.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    fake.DataType = types.SimpleNamespace(FLOAT="f32", HALF="f16", INT32="i32", INT64="i64", BOOL="b")

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data):
            return engine

    fake.Runtime = Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt, "_LOGGER", None)
    return fake


def _engine(monkeypatch, profile_rows=(2, 8), static=True, refuse=None, fail_capture=False, cuda_graphs=True):
    import torch

    from auditor.backends.engines.trt import TrtEngine

    tensors = FakeTensors()
    ops = FakeOps(tensors, fail_capture=fail_capture)
    fake = FakeEngine(tensors, ops, profile_rows, static=static, refuse=refuse)
    _fake_tensorrt(monkeypatch, fake)
    return TrtEngine(b"plan", torch.device("cpu"), cuda_graphs=cuda_graphs, ops=ops), fake, ops


def _feeds(rows: int, offset: float = 0.0):
    import torch

    x = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3) + offset
    return {"x": x, "t": torch.arange(rows, dtype=torch.float32) * 10}


def _expected(feeds):
    return feeds["x"] + feeds["t"][:, None]


def test_each_batch_runs_on_the_smallest_static_profile_that_holds_it_padded(monkeypatch):
    """Profiles of 2 and 8 rows (min = opt = max): 3 rows run on profile 1, padded with the last row,
    the padding cut off the output; 2 rows on profile 0; each profile its own context and buffers."""
    import torch

    engine, fake, ops = _engine(monkeypatch)
    assert engine.profile_rows == [2, 8] and engine.max_rows == 8
    three = _feeds(3)
    out = engine(three)["y"]
    assert out.shape == (3, 3) and torch.equal(out, _expected(three))
    slot = engine.slots[1]
    assert torch.equal(slot.inputs["x"][3:], three["x"][-1:].expand(5, 3))  # padding repeats the last row
    assert torch.equal(slot.inputs["t"][3:], three["t"][-1:].expand(5))
    two = _feeds(2, offset=100)
    assert torch.equal(engine(two)["y"], _expected(two))
    assert sorted(engine.slots) == [0, 1] and len(fake.contexts) == 2
    profiles = [c.calls[0] for c in fake.contexts]
    assert profiles == [("set_optimization_profile_async", 1), ("set_optimization_profile_async", 0)]
    # static profiles: every shape is set once, at the profile's size, never per call
    shapes = [c for c in fake.contexts[0].calls if c[0] == "set_input_shape"]
    assert shapes == [("set_input_shape", "x", (8, 3)), ("set_input_shape", "t", (8,))]
    from auditor.backends.engines.trt import EngineBuildError

    with pytest.raises(EngineBuildError, match="9 rows exceed the engine's largest profile"):
        engine(_feeds(9))


def test_a_static_profile_is_captured_after_its_warm_up_and_replayed(monkeypatch):
    import torch

    engine, fake, ops = _engine(monkeypatch)
    first = _feeds(8)
    assert torch.equal(engine(first)["y"], _expected(first))  # warm-up: plain enqueue, then the capture
    context = fake.contexts[0]
    assert context.executed == 1 and engine.launch == {1: "cuda graph"} and ops.replays == 0
    for offset in (1.0, 2.0):
        feeds = _feeds(5, offset)
        assert torch.equal(engine(feeds)["y"], _expected(feeds))  # new inputs through the same buffers
    assert ops.replays == 2 and context.executed == 3
    assert engine.launch_summary() == "profile 1 (8 rows): cuda graph"


def test_a_failed_capture_stays_on_plain_enqueue_with_the_reason(monkeypatch, capsys):
    import torch

    engine, fake, ops = _engine(monkeypatch, fail_capture=True)
    for offset in (0.0, 1.0, 2.0):
        feeds = _feeds(2, offset)
        assert torch.equal(engine(feeds)["y"], _expected(feeds))
    assert ops.replays == 0 and fake.contexts[0].executed == 3
    assert engine.launch[0].startswith(
        "enqueue (CUDA graph capture failed: RuntimeError: operation not permitted"
    )
    assert "profile 0: enqueue (CUDA graph capture failed" in capsys.readouterr().err


def test_cuda_graphs_can_be_turned_off_and_range_profiles_never_capture(monkeypatch):
    import torch

    off, fake, ops = _engine(monkeypatch, cuda_graphs=False)
    off(_feeds(2))
    off(_feeds(2))
    assert ops.replays == 0 and off.launch == {0: "enqueue (CUDA graphs turned off)"}
    # a bundle exported before static profiles: rows 1..8, shapes set per call, no graph
    ranged, fake, ops = _engine(monkeypatch, profile_rows=(8,), static=False)
    for rows in (3, 5, 3):
        feeds = _feeds(rows)
        assert torch.equal(ranged(feeds)["y"], _expected(feeds))
    assert ops.replays == 0 and ranged.launch[0].startswith("enqueue (a range profile")
    set_x = [c[2] for c in fake.contexts[0].calls if c[:2] == ("set_input_shape", "x")]
    assert set_x == [(8, 3), (3, 3), (5, 3), (3, 3)]


@pytest.mark.parametrize(
    ("refuse", "message"),
    [
        ("set_input_shape", r"set_input_shape\(x, \(8, 3\)\) refused: inside profile 1's range \(8, 3\)"),
        ("set_tensor_address", r"set_tensor_address\(y, \(8, 3\) torch.float32\) refused on profile 1"),
        ("execute_async_v3", r"execute_async_v3\(profile 1, 8 rows\) failed"),
        ("set_optimization_profile_async", r"set_optimization_profile_async\(1\) refused: Error in set"),
        ("create_execution_context", r"create_execution_context\(\) for profile 1 returned None"),
    ],
)
def test_every_refused_tensorrt_call_is_a_named_error(monkeypatch, refuse, message):
    from auditor.backends.engines.trt import EngineRunError, TensorRTCallError

    engine, _, _ = _engine(monkeypatch, refuse=refuse)
    with pytest.raises(TensorRTCallError, match=message) as caught:
        engine(_feeds(3))
    assert isinstance(caught.value, EngineRunError) and caught.value.call.startswith(
        refuse.split("_v3")[0][:10]
    )


def test_a_shape_outside_its_profile_says_so(monkeypatch):
    """A refused shape names the profile's range and whether the shape lay inside it as the engine
    reported it (then TensorRT's log says why) or outside it."""
    from auditor.backends.engines.trt import TensorRTCallError

    engine, fake, _ = _engine(monkeypatch, profile_rows=(8,), static=False)
    fake.profiles[0]["x"] = ((4, 3), (8, 3), (8, 3))
    engine.profiles[0]["x"] = ((4, 3), (8, 3), (8, 3))
    engine(_feeds(8))
    fake.contexts[0].engine.profiles[0]["x"] = ((4, 3), (8, 3), (6, 3))  # TensorRT's view tightens
    with pytest.raises(
        TensorRTCallError,
        match=r"set_input_shape\(x, \(7, 3\)\) refused: inside profile 0's range \(4, 3\)\.\.\(8, 3\)",
    ):
        engine(_feeds(7))
    engine.profiles[0]["x"] = ((4, 3), (8, 3), (6, 3))
    with pytest.raises(TensorRTCallError, match=r"outside profile 0's range \(4, 3\)\.\.\(6, 3\)"):
        engine(_feeds(7))


def test_a_plan_that_does_not_deserialize_is_a_named_miss(monkeypatch):
    import torch

    from auditor.backends.engines.trt import EngineDeserializeError, TrtEngine

    _fake_tensorrt(monkeypatch, None)
    with pytest.raises(
        EngineDeserializeError, match=r"Runtime.deserialize_cuda_engine\(4 bytes\) returned None"
    ):
        TrtEngine(b"plan", torch.device("cpu"), ops=FakeOps(FakeTensors()))


# ---------------------------------------------------------------- a stand-in TensorRT: the build path


class FakeTimingCache:
    def __init__(self, entries) -> None:
        self.entries = set(entries)

    def serialize(self) -> bytes:
        return "\n".join(sorted(self.entries)).encode()

    def combine(self, other, ignore_mismatch) -> bool:
        self.entries |= other.entries
        return True


class FakeProfile:
    def __init__(self, builder) -> None:
        self.builder = builder
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high) -> None:
        if self.builder.refuse == "set_shape":
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[name] = (low, opt, high)


class FakeConfig:
    def __init__(self, builder) -> None:
        self.builder = builder
        self.cache = None
        self.profiles: list[FakeProfile] = []
        self.cleared: list = []

    def set_memory_pool_limit(self, pool, size) -> None:
        pass

    def clear_flag(self, flag) -> None:
        self.cleared.append(flag)

    def create_timing_cache(self, data):
        return None if data == b"garbage" else FakeTimingCache(bytes(data).decode().split())

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        self.cache = cache
        return self.builder.refuse != "set_timing_cache"

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile) -> int:
        if self.builder.refuse == "add_optimization_profile":
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeBuilder:
    """trt.Builder: a build measures one tactic per graph (an entry in the config's timing cache)."""

    refuse: str | None = None
    configs: list = []

    def __init__(self, logger) -> None:
        pass

    def create_network(self, flags):
        return object()

    def create_builder_config(self):
        FakeBuilder.configs.append(FakeConfig(self))
        return FakeBuilder.configs[-1]

    def create_optimization_profile(self):
        return FakeProfile(self)

    def build_serialized_network(self, network, config):
        config.cache.entries.add(f"tactic-{FakeBuilder.graph}")
        return None if self.refuse == "build_serialized_network" else b"serialized plan"


class FakeParser:
    num_errors = 0

    def __init__(self, network, logger) -> None:
        pass

    def parse_from_file(self, path) -> bool:
        FakeBuilder.graph = Path(path).parent.name
        return True


def _builder(monkeypatch, refuse=None):
    import types

    fake = _fake_tensorrt(monkeypatch, None)
    FakeBuilder.refuse, FakeBuilder.configs = refuse, []
    fake.Builder, fake.OnnxParser = FakeBuilder, FakeParser
    fake.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    fake.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    fake.BuilderFlag = types.SimpleNamespace(TF32="tf32")


def _contract():
    from auditor.backends.engines.components import ExportShapes, build_contracts

    shapes = ExportShapes(
        height=32,
        width=32,
        vae_scale_factor=4,
        latent_channels=4,
        text_length=16,
        text_hidden_size=32,
        vocab_size=1000,
        batch_sizes=(1, 4),
    )
    return build_contracts(shapes)["unet"]


def test_builds_use_static_profiles_and_share_one_timing_cache(monkeypatch, tmp_path):
    from auditor.backends.engines.trt import build_engine

    _builder(monkeypatch)
    timing = tmp_path / "engines" / "timing-trt11.4.0-sm90.cache"
    timing.parent.mkdir()
    timing.write_bytes(b"tactic-from-yesterday")
    plan = build_engine(tmp_path / "unet" / "model.onnx", _contract(), "fp32", timing)
    assert plan == b"serialized plan"
    config = FakeBuilder.configs[0]
    assert config.cleared == ["tf32"]  # fp32: TF32 off
    assert config.cache.entries >= {"tactic-from-yesterday"}  # loaded into the builder config
    rows = [profile.shapes["sample"] for profile in config.profiles]
    assert rows == [((2, 4, 8, 8),) * 3, ((8, 4, 8, 8),) * 3]  # min = opt = max, one per batch size
    assert set(config.profiles[1].shapes) == {"sample", "timestep", "encoder_hidden_states"}
    build_engine(tmp_path / "vae_decoder" / "model.onnx", _contract(), "fp16", timing)
    assert FakeBuilder.configs[1].cleared == []
    assert timing.read_bytes().split() == [b"tactic-from-yesterday", b"tactic-unet", b"tactic-vae_decoder"]
    timing.write_bytes(b"garbage")  # another TensorRT's file: the build starts afresh and replaces it
    build_engine(tmp_path / "text_encoder" / "model.onnx", _contract(), "fp16", timing)
    assert timing.read_bytes().split() == [b"tactic-text_encoder"]


@pytest.mark.parametrize(
    ("refuse", "message"),
    [
        ("set_shape", r"IOptimizationProfile.set_shape\(sample, \(2, 4, 8, 8\).* refused: Shape provided"),
        ("add_optimization_profile", r"add_optimization_profile\(profile 0: .*\) returned -1"),
        ("set_timing_cache", r"IBuilderConfig.set_timing_cache\(timing.cache\) returned failure"),
        ("build_serialized_network", r"Builder.build_serialized_network\(fp16, 2 profiles\) returned None"),
    ],
)
def test_every_refused_builder_call_is_a_named_error(monkeypatch, tmp_path, refuse, message):
    from auditor.backends.engines.trt import EngineBuildError, build_engine

    _builder(monkeypatch, refuse)
    with pytest.raises(EngineBuildError, match=message):
        build_engine(tmp_path / "unet" / "model.onnx", _contract(), "fp16", tmp_path / "timing.cache")
    assert not (tmp_path / "timing.cache").exists()  # nothing saved from a failed build
