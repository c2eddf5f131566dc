"""TensorRT engines built from the bundle's portable ONNX graphs (TensorRT 10 and 11 Python API).

An engine runs only on the TensorRT version and GPU architecture that built it. Where a
plan comes from (the bundle's own plans checked against `bundle.json`, a cache keyed by
graph and weights, TensorRT version, GPU, precision and profiles, or a build under a
lock shared by parallel processes) is decided in `engine_cache.py`; this module builds,
deserializes and runs them. The builder reuses a timing cache file per host, so
rebuilding after an edit takes seconds, not minutes.

Precision lives in the graph. Networks are strongly typed (TensorRT 11 allows nothing
else and removed `BuilderFlag.FP16` and the precision-constraint flags; 10.x takes the
STRONGLY_TYPED creation flag), so an fp16 engine is built from the bundle's fp16 graph
(`--precision fp16` at export; `ComponentSpec.half` in components.py says which parts
stay fp32) and an fp32 engine from the fp32 graph, with TF32 turned off so that it meets
the fp32 contract tolerance. The names this module uses are listed in `TENSORRT_API`
and checked against the installed bindings by tests/test_trt_api.py.

Running: each engine enqueues on a stream of its own (never torch's legacy default
stream, on which TensorRT adds synchronizations), inside the engine's device context
(`cuda:N` runs on GPU N), ordered after the caller's stream and before it again; output
buffers are allocated once per engine and reused (static addresses, as CUDA graphs
need). An output is valid until the same engine's next call. TensorRT's log goes to
stderr through one logger (stdout carries `--format json`).

Nothing here needs `tensorrt` at import; every entry point checks `tensorrt_status()`
first. The TensorRT calls themselves run only on a CUDA host.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from auditor.backends.engines.bundle import load_validation
from auditor.backends.engines.components import DEFAULT_TOLERANCES, ComponentContract, ParityRecord, compare
from auditor.errors import BadInputError, TransientError
from auditor.fileio import atomic_write_bytes

if TYPE_CHECKING:
    import torch

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


class EngineBuildError(BadInputError):
    """TensorRT cannot parse a graph or build an engine from it (at export: exit 2; at audit: a fallback)."""


class EngineRunError(TransientError):
    """TensorRT failed to execute an engine that loaded (out of memory, a lost device): exit 75, retry."""


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


def build_engine(
    onnx_path: Path,
    contract: ComponentContract,
    precision: str,
    timing_cache: Path,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """Parse the ONNX graph into a strongly typed network, one optimization profile per batch size, build."""
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    # 10.x: strong typing is opt-in; 11.x: always on, the flag accepted and ignored
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; TF32 GEMMs miss the fp32 tolerance
    try:
        previous = timing_cache.read_bytes()
    except OSError:
        previous = b""
    cache = config.create_timing_cache(previous)
    if cache is None:  # unreadable file from another version: start afresh
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    for profile in contract.profiles:
        shapes = builder.create_optimization_profile()
        for name in contract.input_names:
            shapes.set_shape(name, profile.min[name], profile.opt[name], profile.max[name])
        config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"{onnx_path}: TensorRT failed to build a {precision} engine (see the TensorRT log above)"
        )
    try:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())), mode=0o644)
    except OSError:
        pass  # a read-only cache folder only costs the next build its head start
    return bytes(memoryview(serialized))


# ---------------------------------------------------------------- run


def choose_profile(profile_rows: list[int], rows: int) -> int:
    """The smallest profile whose max rows hold `rows`; a typed error when none does."""
    candidates = [k for k, limit in enumerate(profile_rows) if limit >= rows]
    if not candidates:
        raise EngineBuildError(
            f"{rows} rows exceed the engine's largest profile ({max(profile_rows)}); callers split batches"
        )
    return min(candidates, key=lambda k: profile_rows[k])


class OutputBuffers:
    """One buffer per output, sized for the largest call so far and reused: views of it are returned."""

    def __init__(self, device) -> None:
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> torch.Tensor:
        import torch

        buffer = self.buffers.get(name)
        need = int(np.prod(shape)) if shape else 1
        if buffer is None or buffer.dtype != dtype or buffer.numel() < need:
            buffer = torch.empty(need, dtype=dtype, device=self.device)
            self.buffers[name] = buffer
        return buffer[:need].view(shape)


def run_in_chunks(engine, feeds: dict[str, torch.Tensor], max_rows: int) -> dict[str, torch.Tensor]:
    """`engine(feeds)` in slices of at most `max_rows` rows, outputs concatenated (copied off the buffers)."""
    import torch

    rows = int(next(iter(feeds.values())).shape[0])
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, rows, max_rows):
        piece = {name: value[start : start + max_rows] for name, value in feeds.items()}
        for name, value in engine(piece).items():
            parts.setdefault(name, []).append(value.clone())
    return {name: torch.cat(values) for name, values in parts.items()}


class TrtEngine:
    """A deserialized engine with one execution context and stream; torch CUDA tensors in and out."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        import tensorrt as trt
        import torch

        self.trt = trt
        self.device = device
        self.runtime = trt.Runtime(trt_logger())
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ValueError("TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)  # not the legacy default stream
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
        first = self.inputs[0]
        self.profile_rows = [
            int(self.engine.get_tensor_profile_shape(first, k)[2][0])
            for k in range(self.engine.num_optimization_profiles)
        ]
        self.active_profile = -1
        self.buffers = OutputBuffers(device)

    @property
    def max_rows(self) -> int:
        return max(self.profile_rows)

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        rows = int(next(iter(feeds.values())).shape[0])
        profile = choose_profile(self.profile_rows, rows)
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            keep = [feeds[n].to(device=self.device, dtype=self.dtypes[n]).contiguous() for n in self.inputs]
            self.stream.wait_stream(caller)  # the inputs are written on the caller's stream
            if profile != self.active_profile:
                self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
                self.active_profile = profile
            for name, tensor in zip(self.inputs, keep, strict=True):
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                results[name] = self.buffers.get(name, shape, self.dtypes[name])
                self.context.set_tensor_address(name, results[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineRunError("TensorRT failed to execute an engine (see the TensorRT log above)")
            caller.wait_stream(self.stream)  # later work on the caller's stream sees the results
        return results


def _sync(device) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def engine_parity(
    engine, contract: ComponentContract, validation: Path, precision: str, seed: int
) -> ParityRecord:
    """The validation file's inputs through `engine`, in slices its profiles accept, against torch's outputs."""
    import torch

    inputs, references = load_validation(validation)
    feeds = {name: torch.from_numpy(inputs[name]) for name in contract.input_names}
    outputs = run_in_chunks(engine, feeds, engine.max_rows)
    _sync(engine.device)
    got = {name: outputs[name].float().cpu().numpy() for name in contract.output_names}
    tolerance = contract.tolerance if precision == "fp32" else DEFAULT_TOLERANCES["fp16"]
    return compare(
        got, {k: np.asarray(v) for k, v in references.items()}, tolerance, f"tensorrt {precision}", seed
    )
