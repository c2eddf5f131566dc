"""TensorRT engines built from the bundle's portable ONNX graphs (TensorRT 10 and 11 Python API).

An engine runs only on the TensorRT version and GPU architecture that built it. Where a
plan comes from (the bundle's own plans checked against `bundle.json`, a cache keyed by
graph and weights, TensorRT version, GPU, precision and profiles, or a build under a
lock shared by parallel processes) is decided in `engine_cache.py`; this module builds,
deserializes and runs them.

Precision lives in the graph. Networks are strongly typed (TensorRT 11 allows nothing
else and removed `BuilderFlag.FP16` and the precision-constraint flags; 10.x takes the
STRONGLY_TYPED creation flag), so an fp16 engine is built from the bundle's fp16 graph
(`--precision fp16` at export; `ComponentSpec.half` in components.py says which parts
stay fp32) and an fp32 engine from the fp32 graph, with TF32 turned off so that it meets
the fp32 contract tolerance. The names this module uses are listed in `TENSORRT_API`
and checked against the installed bindings by tests/test_trt_api.py.

Building: one optimization profile per contract profile (bundles exported now: min = opt =
max = the rows of one audit batch size, so every kernel is tuned for exactly the shape it
runs), and one timing cache per TensorRT version and compute capability in the cache
folder, read into the builder config and merged back after the build under a lock
(`engine_cache.TimingCacheFile`): rebuilds and other components reuse every measured tactic.

Running: each call picks the smallest profile that holds its rows and pads the rows up to
that profile's size (repeating the last row; the padding is cut off the outputs). Every
profile in use gets its own execution context with static input and output buffers, on a
stream of the engine's own (never torch's legacy default stream, on which TensorRT adds
synchronizations), inside the engine's device context, ordered after the caller's stream
and before it again. Over a static profile the first call runs plain `execute_async_v3`
(the warm-up TensorRT needs before a capture) and is then captured into a CUDA graph that
every later call of that profile replays; a capture that fails leaves the profile on plain
enqueue with the reason recorded (`TrtEngine.launch`). An output is valid until the same
engine's next call. Every TensorRT call's result is checked: a refusal raises a typed
error naming the call, the tensor and the shape (`TensorRTCallError`, `EngineBuildError`,
`EngineDeserializeError`). TensorRT's log goes to stderr through one logger (stdout
carries `--format json`).

Nothing here needs `tensorrt` at import; every entry point checks `tensorrt_status()`
first. The TensorRT calls themselves run only on a CUDA host; the CUDA side goes through
`engine_run.CudaOps`, which tests replace to drive the whole run path with a stand-in
`tensorrt` (the typed errors, profile choice and validation in slices live there too).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.backends.engines.components import ComponentContract
from auditor.backends.engines.engine_cache import TimingCacheFile
from auditor.backends.engines.engine_run import (
    CudaOps,
    EngineBuildError,
    EngineDeserializeError,
    EngineRunError,
    Slot,
    TensorRTCallError,
    choose_profile,
    engine_parity,
    run_in_chunks,
)
from auditor.errors import first_line

if TYPE_CHECKING:
    import torch

__all__ = [  # the errors and run helpers live in engine_run.py; importing them from here still works
    "TENSORRT_API",
    "CudaOps",
    "EngineBuildError",
    "EngineDeserializeError",
    "EngineRunError",
    "TensorRTCallError",
    "TrtEngine",
    "build_engine",
    "choose_profile",
    "engine_parity",
    "host_identity",
    "require_tensorrt",
    "route_trt_message",
    "run_in_chunks",
    "tensorrt_status",
    "trt_logger",
]

# Every TensorRT name this module touches, as a path from the `tensorrt` module. Checked
# against the installed bindings on a TensorRT host, and against the names TensorRT 11
# removed everywhere (tests/test_trt_api.py).
TENSORRT_API = (
    "ILogger.__init__",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "OnnxParser.parse_from_file",
    "OnnxParser.get_error",
    "OnnxParser.num_errors",
    "IBuilderConfig.set_memory_pool_limit",
    "IBuilderConfig.clear_flag",
    "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache",
    "IBuilderConfig.get_timing_cache",
    "IBuilderConfig.add_optimization_profile",
    "ITimingCache.serialize",
    "ITimingCache.combine",
    "IOptimizationProfile.set_shape",
    "MemoryPoolType.WORKSPACE",
    "BuilderFlag.TF32",
    "Runtime.deserialize_cuda_engine",
    "ICudaEngine.create_execution_context",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.num_optimization_profiles",
    "IExecutionContext.set_optimization_profile_async",
    "IExecutionContext.set_input_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.get_tensor_shape",
    "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT",
    "TensorIOMode.OUTPUT",
    "DataType.FLOAT",
    "DataType.HALF",
    "DataType.INT32",
    "DataType.INT64",
    "DataType.BOOL",
)

DEFAULT_WORKSPACE_BYTES = 8 << 30


def tensorrt_status() -> str | None:
    """None when TensorRT engines can be built and run here, else why not (one line)."""
    try:
        import tensorrt
    except ImportError:
        return "tensorrt is not installed (on a CUDA host: pip install 't2i-auditor[gpu]')"
    except Exception as exc:  # a broken CUDA install raises OSError and others at import  # noqa: BLE001
        return f"tensorrt failed to import ({type(exc).__name__}: {exc})"
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        return f"TensorRT {tensorrt.__version__} is too old; expected 10 or newer"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available on this host (TensorRT needs an NVIDIA GPU)"
    return None


def require_tensorrt() -> None:
    reason = tensorrt_status()
    if reason:
        raise EngineBuildError(f"--trt: {reason}")


def host_identity(device_index: int = 0) -> dict[str, str]:
    import tensorrt
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return {
        "tensorrt": str(tensorrt.__version__),
        "gpu": torch.cuda.get_device_name(device_index),
        "compute_capability": f"{major}.{minor}",
    }


# ---------------------------------------------------------------- logging

# TensorRT's Severity values: INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
_SEVERITY_NAMES = ("internal error", "error", "warning", "info", "verbose")
_LEVELS = {"error": 1, "warning": 2, "info": 3, "verbose": 4}
_LOGGER = None


def route_trt_message(severity, message: str, stream=None) -> None:
    """One TensorRT message to stderr (never stdout), at or above $T2I_AUDITOR_TRT_LOG (default warning)."""
    level = int(severity)
    limit = _LEVELS.get(os.environ.get("T2I_AUDITOR_TRT_LOG", "warning").lower(), 2)
    if level > limit:
        return
    name = _SEVERITY_NAMES[level] if 0 <= level < len(_SEVERITY_NAMES) else str(level)
    out = stream or sys.stderr
    out.write(f"tensorrt {name}: {message}\n")
    out.flush()


def trt_logger():
    """The process's one TensorRT logger (TensorRT treats the logger as a singleton)."""
    global _LOGGER
    if _LOGGER is None:
        import tensorrt as trt

        class StderrLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)  # required by the bindings for a Python subclass

            def log(self, severity, msg) -> None:
                route_trt_message(severity, msg)

        _LOGGER = StderrLogger()
    return _LOGGER


# ---------------------------------------------------------------- build


def _shape(dims) -> tuple[int, ...]:
    """A trt.Dims (or any sequence) as a tuple of ints; indexed, not iterated."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def build_engine(
    onnx_path: Path,
    contract: ComponentContract,
    precision: str,
    timing_cache: Path,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """Parse the ONNX graph into a strongly typed network, one optimization profile per contract
    profile, the shared timing cache `timing_cache` loaded and merged back; the serialized plan."""
    import tensorrt as trt

    def refused(call: str, why: str = "returned failure"):
        return EngineBuildError(f"{onnx_path}: {call} {why} (see the TensorRT log above)")

    logger = trt_logger()
    builder = trt.Builder(logger)
    # 10.x: strong typing is opt-in; 11.x: always on, the flag accepted and ignored
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    if network is None:
        raise refused("Builder.create_network(STRONGLY_TYPED)", "returned None")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph ({errors})")
    config = builder.create_builder_config()
    if config is None:
        raise refused("Builder.create_builder_config()", "returned None")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; TF32 GEMMs miss the fp32 tolerance
    shared = TimingCacheFile(timing_cache)
    cache = config.create_timing_cache(shared.read())
    if cache is None:  # unreadable file from another version: start afresh
        cache = config.create_timing_cache(b"")
    if cache is None:
        raise refused("IBuilderConfig.create_timing_cache(b'')", "returned None")
    if not config.set_timing_cache(cache, ignore_mismatch=True):
        raise refused(f"IBuilderConfig.set_timing_cache({timing_cache.name})")
    for k, profile in enumerate(contract.profiles):
        shapes = builder.create_optimization_profile()
        for name in contract.input_names:
            low, opt, high = profile.min[name], profile.opt[name], profile.max[name]
            try:
                shapes.set_shape(name, low, opt, high)  # the bindings raise on inconsistent shapes
            except (RuntimeError, TypeError, ValueError) as exc:
                raise refused(
                    f"IOptimizationProfile.set_shape({name}, {low}, {opt}, {high})", f"refused: {exc}"
                ) from None
        if config.add_optimization_profile(shapes) < 0:
            raise refused(
                f"IBuilderConfig.add_optimization_profile(profile {k}: {profile.max})", "returned -1"
            )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise refused(
            f"Builder.build_serialized_network({precision}, {len(contract.profiles)} profiles)",
            "returned None",
        )
    shared.update(lambda current: _merged_timing_cache(config, current))
    return bytes(memoryview(serialized))


def _merged_timing_cache(config, current: bytes) -> bytes:
    """This build's timing cache combined into what the shared file holds now (its entries win on a
    conflict); ours alone when the file's cannot be read or combined."""
    ours = config.get_timing_cache()
    if current:
        theirs = config.create_timing_cache(current)
        if theirs is not None and theirs.combine(ours, True):
            return bytes(memoryview(theirs.serialize()))
    return bytes(memoryview(ours.serialize()))


# ---------------------------------------------------------------- run


class TrtEngine:
    """A deserialized engine; torch CUDA tensors in and out, one execution context per profile in use.

    `cuda_graphs` (default: on unless $T2I_AUDITOR_TRT_CUDA_GRAPHS is 0) captures a CUDA graph per
    static profile after its first run; `ops` replaces the CUDA side (tests)."""

    def __init__(
        self, data: bytes, device: torch.device, *, cuda_graphs: bool | None = None, ops=None
    ) -> None:
        import tensorrt as trt
        import torch

        self.trt = trt
        self.device = device
        self.ops = ops or CudaOps(device)
        if cuda_graphs is None:
            cuda_graphs = os.environ.get("T2I_AUDITOR_TRT_CUDA_GRAPHS", "1") != "0"
        self.cuda_graphs = cuda_graphs
        self.runtime = trt.Runtime(trt_logger())
        with self.ops.scope():
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise EngineDeserializeError(
                    f"Runtime.deserialize_cuda_engine({len(data)} bytes) returned None: a plan of another"
                    " TensorRT version or GPU, or a corrupt one"
                )
            self.stream = self.ops.new_stream()  # not the legacy default stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.BOOL: torch.bool,
        }
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        # per profile, per input: (min, opt, max) shapes
        self.profiles = [
            {n: tuple(_shape(s) for s in self.engine.get_tensor_profile_shape(n, k)) for n in self.inputs}
            for k in range(self.engine.num_optimization_profiles)
        ]
        first = self.inputs[0]
        self.profile_rows = [profile[first][2][0] for profile in self.profiles]
        self.slots: dict[int, Slot] = {}

    @property
    def max_rows(self) -> int:
        return max(self.profile_rows)

    @property
    def launch(self) -> dict[int, str]:
        """How each profile in use launches: "cuda graph", or "enqueue (...)" with the reason."""
        return {k: slot.launch for k, slot in sorted(self.slots.items())}

    def launch_summary(self) -> str:
        if not self.slots:
            return "not run yet"
        return "; ".join(f"profile {k} ({self.slots[k].rows} rows): {how}" for k, how in self.launch.items())

    # -- the checked calls

    def _range(self, profile: int, name: str) -> str:
        low, _, high = self.profiles[profile][name]
        return f"{low}..{high}" if low != high else f"{high}"

    def _set_input_shape(self, slot: Slot, name: str, shape: tuple[int, ...]) -> None:
        if slot.shapes.get(name) == shape:
            return
        low, _, high = self.profiles[slot.profile][name]
        inside = len(shape) == len(high) and all(
            a <= s <= b for a, s, b in zip(low, shape, high, strict=True)
        )
        if not slot.context.set_input_shape(name, shape):
            where = "inside" if inside else "outside"
            raise TensorRTCallError(
                f"set_input_shape({name}, {shape})",
                f"refused: {where} profile {slot.profile}'s range {self._range(slot.profile, name)}",
            )
        slot.shapes[name] = shape

    def _set_address(self, slot: Slot, name: str, tensor) -> None:
        if not slot.context.set_tensor_address(name, tensor.data_ptr()):
            raise TensorRTCallError(
                f"set_tensor_address({name}, {tuple(tensor.shape)} {tensor.dtype})",
                f"refused on profile {slot.profile}",
            )

    def _enqueue(self, slot: Slot, rows: int) -> None:
        if not slot.context.execute_async_v3(self.ops.handle(self.stream)):
            raise TensorRTCallError(
                f"execute_async_v3(profile {slot.profile}, {rows} rows)",
                "failed (see the TensorRT log above)",
            )

    # -- profiles in use

    def _slot(self, profile: int) -> Slot:
        slot = self.slots.get(profile)
        if slot is not None:
            return slot
        context = self.engine.create_execution_context()
        if context is None:
            raise TensorRTCallError(
                f"create_execution_context() for profile {profile}", "returned None (out of GPU memory?)"
            )
        try:
            ok = context.set_optimization_profile_async(profile, self.ops.handle(self.stream))
        except RuntimeError as exc:  # the bindings raise where the C++ call returns false
            ok, why = False, first_line(exc)
        else:
            why = "returned False"
        if not ok:
            raise TensorRTCallError(f"set_optimization_profile_async({profile})", f"refused: {why}")
        shapes = self.profiles[profile]
        static = all(low == high for low, _, high in shapes.values())
        rows = self.profile_rows[profile]
        inputs = {n: self.ops.empty(shapes[n][2], self.dtypes[n]) for n in self.inputs}
        slot = Slot(profile, context, inputs, {}, static, rows)
        for name, tensor in inputs.items():
            self._set_input_shape(slot, name, tuple(tensor.shape))
            self._set_address(slot, name, tensor)
        for name in self.outputs:
            shape = _shape(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTCallError(f"get_tensor_shape({name})", f"returned {shape} on profile {profile}")
            slot.outputs[name] = self.ops.empty(shape, self.dtypes[name])
            self._set_address(slot, name, slot.outputs[name])
        if not static:
            slot.launch = "enqueue (a range profile: its shapes change, a CUDA graph would not)"
        elif not self.cuda_graphs:
            slot.launch = "enqueue (CUDA graphs turned off)"
        self.slots[profile] = slot
        return slot

    def _fill(self, slot: Slot, feeds: dict, rows: int) -> int:
        """Copy the feeds into the slot's input buffers; pad a static profile by repeating the last row.
        Returns the rows the engine will run."""
        run_rows = slot.rows if slot.static else max(rows, self.profiles[slot.profile][self.inputs[0]][0][0])
        for name in self.inputs:
            buffer, value = slot.inputs[name], feeds[name]
            buffer[:rows].copy_(value)
            if run_rows > rows:
                buffer[rows:run_rows].copy_(
                    buffer[rows - 1 : rows].expand(run_rows - rows, *buffer.shape[1:])
                )
            if not slot.static:
                self._set_input_shape(slot, name, (run_rows, *buffer.shape[1:]))
        return run_rows

    def _capture(self, slot: Slot) -> None:
        """Record the slot's launch into a CUDA graph (after a warm-up run); plain enqueue if it fails."""
        graph = self.ops.new_graph()
        try:
            with self.ops.capture(graph, self.stream):
                ok = slot.context.execute_async_v3(self.ops.handle(self.stream))
            if not ok:
                raise RuntimeError("execute_async_v3 returned False while capturing")
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves plain enqueue
            self.ops.synchronize(self.stream)
            slot.launch = f"enqueue (CUDA graph capture failed: {type(exc).__name__}: {first_line(exc)})"
            route_trt_message(2, f"profile {slot.profile}: {slot.launch}")
            return
        slot.graph = graph
        slot.launch = "cuda graph"

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = int(next(iter(feeds.values())).shape[0])
        profile = choose_profile(self.profile_rows, rows)
        with self.ops.scope():
            slot = self._slot(profile)
            caller = self.ops.current_stream()
            self.stream.wait_stream(caller)  # the inputs are written on the caller's stream
            with self.ops.on(self.stream):
                run_rows = self._fill(slot, feeds, rows)
            if slot.graph is not None:
                self.ops.replay(slot.graph, self.stream)
            else:
                self._enqueue(slot, run_rows)
                slot.runs += 1
                if slot.static and self.cuda_graphs and slot.runs == 1:
                    self._capture(slot)  # the run above was the warm-up; the capture itself runs nothing
            caller.wait_stream(self.stream)  # later work on the caller's stream sees the results
        return {name: buffer[:rows] for name, buffer in slot.outputs.items()}
