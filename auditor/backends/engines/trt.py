"""TensorRT engines built from the bundle's portable ONNX graphs (TensorRT 10 and 11 Python API).

An engine runs only on the TensorRT version and GPU architecture that built it, so
engines are cached, never shipped as the bundle's identity: the cache key is the
sha256 over (ONNX sha256, TensorRT version, GPU name, compute capability, precision,
shape profiles), and a cached engine that fails to deserialize, or whose bytes no
longer match their recorded sha256, is a miss and is rebuilt. The builder reuses a
timing cache file per host, so rebuilding after an edit takes seconds, not minutes.

Precision lives in the graph. Networks are strongly typed (TensorRT 11 allows nothing
else and removed `BuilderFlag.FP16` and the precision-constraint flags; 10.x takes the
STRONGLY_TYPED creation flag), so an fp16 engine is built from the bundle's fp16 graph
(`--precision fp16` at export; see `ComponentSpec.half` in components.py for which
parts stay fp32) and an fp32 engine from the fp32 graph, with TF32 turned off so that it meets the
fp32 contract tolerance. The names this module uses are listed in `TENSORRT_API` and
checked against the installed bindings by tests/test_trt_api.py.

Nothing here is importable without `tensorrt`; every entry point checks
`tensorrt_status()` first. This module is exercised only on a CUDA host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from auditor.backends._base import BackendInfo, library_versions, resolve_device
from auditor.backends.engines.bundle import BackendUnavailable, load_validation
from auditor.backends.engines.components import (
    COMPONENTS,
    DEFAULT_TOLERANCES,
    ComponentContract,
    ComponentSpec,
    ParityRecord,
    compare,
)
from auditor.backends.engines.loop import EngineGenerator, SpecRunners, engine_precision
from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes
from auditor.progress import Reporter

if TYPE_CHECKING:
    import torch

    from auditor.backends.engines.bundle import Bundle, BundleManifest, EngineRecord

# Every TensorRT name this module touches, as a path from the `tensorrt` module. Checked
# against the installed bindings on a TensorRT host, and against the names TensorRT 11
# removed everywhere (tests/test_trt_api.py).
TENSORRT_API = (
    "Logger.WARNING",
    "Logger.ERROR",
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

# hidden: `auditor.identity.hash_model` skips dot-names, so building engines for a new GPU
# does not change the bundle's own digest (the one an audit report cites for it)
ENGINE_DIR = ".engines"
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


def engine_key(onnx_sha256: str, host: dict[str, str], precision: str, contract: ComponentContract) -> str:
    document = {
        "scheme": "t2i-auditor-trt-engine-v2",  # v2: strongly typed builds (v1 engines are misses)
        "onnx_sha256": onnx_sha256,
        "tensorrt": host["tensorrt"],
        "gpu": host["gpu"],
        "compute_capability": host["compute_capability"],
        "precision": precision,
        "profiles": [p.model_dump(mode="json") for p in contract.profiles],
    }
    return sha256_bytes(canonical_json(document))


class EngineCache:
    """`<root>/<component>-<key[:16]>.plan` + `.json` (full key, sha256 of the plan)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def plan_path(self, component: str, key: str) -> Path:
        return self.root / f"{component}-{key[:16]}.plan"

    def load(self, component: str, key: str) -> bytes | None:
        plan = self.plan_path(component, key)
        meta = plan.with_suffix(".json")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            data = plan.read_bytes()
        except (OSError, ValueError):
            return None
        if info.get("key") != key or info.get("sha256") != sha256_bytes(data):
            return None
        return data

    def store(self, component: str, key: str, data: bytes, meta: dict) -> Path:
        plan = self.plan_path(component, key)
        atomic_write_bytes(plan, data, mode=0o644)
        meta = meta | {"key": key, "sha256": sha256_bytes(data)}
        atomic_write_text(plan.with_suffix(".json"), json.dumps(meta, indent=2), mode=0o644)
        return plan


def default_cache_root(bundle_root: Path) -> Path:
    """The bundle's own .engines/ folder when writable, else the user cache."""
    target = bundle_root / ENGINE_DIR
    if os.access(bundle_root, os.W_OK) and (not target.exists() or os.access(target, os.W_OK)):
        return target
    base = Path(os.environ.get("T2I_AUDITOR_CACHE") or Path.home() / ".cache" / "t2i-auditor")
    return base / "engines"


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

    logger = trt.Logger(trt.Logger.WARNING)
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
    atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())), mode=0o644)
    return bytes(memoryview(serialized))


class TrtEngine:
    """A deserialized engine with one execution context; tensors in and out are torch CUDA tensors."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        import tensorrt as trt
        import torch

        self.trt = trt
        self.device = device
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ValueError("TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
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

    @property
    def max_rows(self) -> int:
        return max(self.profile_rows)

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        rows = int(next(iter(feeds.values())).shape[0])
        candidates = [k for k, limit in enumerate(self.profile_rows) if limit >= rows]
        if not candidates:
            raise ValueError(f"{rows} rows exceed the engine's largest profile ({self.max_rows})")
        profile = min(candidates, key=lambda k: self.profile_rows[k])
        stream = torch.cuda.current_stream(self.device)
        if profile != self.active_profile:
            self.context.set_optimization_profile_async(profile, stream.cuda_stream)
            self.active_profile = profile
        keep = []
        for name in self.inputs:
            tensor = feeds[name].to(device=self.device, dtype=self.dtypes[name]).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, results[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return results  # ordered on `stream`; later torch work on it sees the results


def engine_parity(
    engine: TrtEngine, contract: ComponentContract, validation: Path, precision: str, seed: int
) -> ParityRecord:
    import torch

    inputs, references = load_validation(validation)
    feeds = {name: torch.from_numpy(inputs[name]) for name in contract.input_names}
    outputs = engine(feeds)
    torch.cuda.synchronize(engine.device)
    got = {name: outputs[name].float().cpu().numpy() for name in contract.output_names}
    tolerance = contract.tolerance if precision == "fp32" else DEFAULT_TOLERANCES["fp16"]
    return compare(
        got, {k: np.asarray(v) for k, v in references.items()}, tolerance, f"tensorrt {precision}", seed
    )


def ensure_engine(
    root: Path,
    manifest: BundleManifest,
    component: str,
    precision: str,
    cache: EngineCache,
    device: torch.device,
    reporter: Reporter | None = None,
) -> tuple[TrtEngine, str, ParityRecord, bool]:
    """Engine for `component` from the cache, else built; returns (engine, key, parity, built)."""
    contract = manifest.components[component].contract
    graph = manifest.graph_for(component, precision)  # BackendUnavailable: no fp16 graphs
    host = host_identity(device.index or 0)
    key = engine_key(manifest.sha256_of(component, graph), host, precision, contract)
    data = cache.load(component, key)
    engine = None
    if data is not None:
        try:
            engine = TrtEngine(data, device)
        except Exception:  # a failed deserialization is a cache miss  # noqa: BLE001
            engine = None
    built = engine is None
    if built:
        if reporter:
            reporter.log(f"tensorrt: building {component} ({precision}) for {host['gpu']}")
        timing = cache.root / f"timing-{sha256_bytes(canonical_json(host))[:16]}.cache"
        data = build_engine(root / graph, contract, precision, timing)
        cache.store(component, key, data, {"component": component, "precision": precision, **host})
        engine = TrtEngine(data, device)
    record = manifest.components[component]
    parity = engine_parity(engine, contract, root / record.validation.path, precision, record.parity.seed)
    return engine, key, parity, built


def build_bundle_engines(
    root: Path, manifest: BundleManifest, precision: str, reporter: Reporter | None = None
) -> tuple[EngineRecord, ...]:
    """At export (`--trt`): build, validate and record engines into the bundle's .engines/ folder."""
    import torch

    from auditor.backends.engines.bundle import EngineRecord

    require_tensorrt()
    device = torch.device("cuda", torch.cuda.current_device())
    cache = EngineCache(root / ENGINE_DIR)
    host = host_identity(device.index or 0)
    records = []
    for component in COMPONENTS:
        _, key, parity, _ = ensure_engine(root, manifest, component, precision, cache, device, reporter)
        plan = cache.plan_path(component, key)
        records.append(
            EngineRecord(
                component=component,  # type: ignore[arg-type]
                cache_key=key,
                path=plan.relative_to(root).as_posix(),
                sha256=sha256_bytes(plan.read_bytes()),
                precision=precision,  # type: ignore[arg-type]
                tensorrt=host["tensorrt"],
                gpu=host["gpu"],
                compute_capability=host["compute_capability"],
                parity=parity,
            )
        )
    return tuple(records)


class TrtRunners(SpecRunners):
    """ComponentRunners over three TensorRT engines; the loop keeps latents on the GPU."""

    def __init__(
        self, engines: dict[str, TrtEngine], contracts: dict[str, ComponentContract], device
    ) -> None:
        self.engines = engines
        self.device = device
        self.max_images = min(engines[name].max_rows // contracts[name].rows_per_image for name in COMPONENTS)

    def _run(self, spec: ComponentSpec, *tensors):
        return self.engines[spec.name](dict(zip(spec.input_names, tensors, strict=True)))[spec.output]


def open_engines(
    bundle: Bundle, precision: str, device, cache_root: Path | None = None, reporter: Reporter | None = None
) -> tuple[TrtRunners, list[ParityRecord], list[str]]:
    """Engines for every component (cached or built now); returns runners, parity, and what was built."""
    cache = EngineCache(cache_root or default_cache_root(bundle.root))
    engines, parities, built = {}, [], []
    for component in COMPONENTS:
        engine, _, parity, was_built = ensure_engine(
            bundle.root, bundle.manifest, component, precision, cache, device, reporter
        )
        engines[component] = engine
        parities.append(parity)
        if was_built:
            built.append(component)
    contracts = {name: record.contract for name, record in bundle.manifest.components.items()}
    return TrtRunners(engines, contracts, device), parities, built


# ---------------------------------------------------------------- the tensorrt backend


class TensorRTGenerator(EngineGenerator):
    """The bundle's graphs as TensorRT engines (cached per TensorRT version and GPU, built on a miss)."""

    backend = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 16,
        engine_cache: str | os.PathLike[str] | None = None,
        reporter=None,
    ) -> None:
        reason = tensorrt_status()
        if reason:
            raise BackendUnavailable(reason)
        import tensorrt
        import torch

        precision = engine_precision(dtype)
        if device == "cpu":
            raise BackendUnavailable("TensorRT needs a CUDA device and --device cpu was given")
        device = resolve_device(device)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        try:
            runners, parities, built = open_engines(
                bundle, precision, self.device, Path(engine_cache) if engine_cache else None, reporter
            )
        except EngineBuildError as exc:  # at audit time a failed build is a fallback, not a failure
            raise BackendUnavailable(str(exc)) from None
        failed = [p.summary() for p in parities if not p.passed]
        if failed:
            raise BackendUnavailable(f"TensorRT engines miss their tolerance: {'; '.join(failed)}")
        self.note = f"engines built on this host for {', '.join(built)}" if built else None
        self.tensorrt_version = str(tensorrt.__version__)
        super().__init__(bundle, runners, batch_size)

    def describe(self) -> BackendInfo:
        import torch

        return BackendInfo(
            backend="tensorrt",
            device=torch.cuda.get_device_name(self.device),
            dtype=self.dtype,
            versions=library_versions(
                tensorrt=self.tensorrt_version, bundle_source=self.bundle.manifest.source.digest
            ),
            note=self.note,
        )
