"""The tensorrt backend: engines for a bundle's components, validated, and the generator that runs them.

Where each plan comes from is `engine_cache.obtain` (the bundle's own plans checked against
its manifest, the cache, or a build under a lock); building, deserializing and running
engines is `trt.py`. At export (`--trt`) `build_bundle_engines` records the engines in the
manifest; at audit time `TensorRTGenerator` opens them, or says why not
(`BackendUnavailable`: the loader falls back to torch), and a report records each
engine's cache key and plan sha256 (`describe().versions`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.backends._base import BackendInfo, library_versions, resolve_device
from auditor.backends.engines.bundle import BackendUnavailable
from auditor.backends.engines.components import ComponentContract, ComponentSpec, ParityRecord
from auditor.backends.engines.engine_cache import (
    ENGINE_DIR,
    EngineCache,
    LockTimeout,
    Obtained,
    ShippedPlans,
    default_cache_root,
    engine_key,
    engine_versions,
    graph_digest,
    obtain,
)
from auditor.backends.engines.engine_run import (
    EngineBuildError,
    EngineDeserializeError,
    EngineRunError,
    engine_parity,
)
from auditor.backends.engines.loop import EngineGenerator, SpecRunners, engine_precision
from auditor.backends.engines.trt import (
    TrtEngine,
    build_engine,
    host_identity,
    require_tensorrt,
    tensorrt_status,
)
from auditor.errors import first_line
from auditor.progress import Reporter

if TYPE_CHECKING:
    import torch

    from auditor.backends.engines.bundle import Bundle, BundleManifest, EngineRecord


class _Loaded:
    def __init__(self, engine: TrtEngine) -> None:
        self.engine = engine
        self.parity: ParityRecord | None = None


def ensure_engine(
    root: Path,
    manifest: BundleManifest,
    component: str,
    precision: str,
    cache: EngineCache,
    device: torch.device,
    reporter: Reporter | None = None,
) -> tuple[TrtEngine, Obtained, ParityRecord]:
    """The engine for `component`: the bundle's plan, the cache's, or built now (engine_cache.obtain)."""
    record = manifest.components[component]
    contract = record.contract
    graph = manifest.graph_for(component, precision)  # BackendUnavailable: no fp16 graphs
    host = host_identity(device.index or 0)
    key = engine_key(graph_digest(manifest, component, graph), host, precision, contract)
    validation = root / record.validation.path

    undeserializable = "no reason given"  # why the last plan that did not deserialize failed

    def load(data: bytes) -> _Loaded | None:
        nonlocal undeserializable
        try:
            return _Loaded(TrtEngine(data, device))
        except EngineDeserializeError as exc:  # another TensorRT version or GPU, a corrupt plan: a miss
            undeserializable = first_line(exc)
            return None

    def check(loaded: _Loaded) -> ParityRecord:
        loaded.parity = engine_parity(loaded.engine, contract, validation, precision, record.parity.seed)
        return loaded.parity

    def usable(loaded: _Loaded) -> bool:
        try:
            return check(loaded).passed
        except (EngineBuildError, EngineRunError) as exc:  # a stored plan that cannot run here: a miss
            if reporter:
                reporter.log(
                    f"tensorrt: {component}: a stored plan fails here ({first_line(exc)}); rebuilding"
                )
            return False

    def build() -> bytes:
        if reporter:
            reporter.log(f"tensorrt: building {component} ({precision}) for {host['gpu']}")
        return build_engine(root / graph, contract, precision, cache.timing_cache(host).path)

    try:
        got = obtain(
            component,
            key,
            shipped=ShippedPlans(root, manifest),
            cache=cache,
            load=load,
            usable=usable,
            build=build,
            meta={"component": component, "precision": precision, **host},
        )
    except LockTimeout as exc:
        raise BackendUnavailable(str(exc)) from None
    if got.value is None:
        raise EngineDeserializeError(
            f"{component}: the plan TensorRT just built does not load: {undeserializable}"
        )
    parity = got.value.parity or check(got.value)  # a fresh build's TensorRT call errors surface here
    return got.value.engine, got, parity


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
    for component in manifest.components:
        try:
            _, got, parity = ensure_engine(root, manifest, component, precision, cache, device, reporter)
        except (BackendUnavailable, EngineRunError) as exc:
            raise EngineBuildError(f"--trt: {component}: {first_line(exc)}") from None
        records.append(
            EngineRecord(
                component=component,  # type: ignore[arg-type]
                cache_key=got.key,
                path=cache.plan_path(component, got.key).relative_to(root).as_posix(),
                sha256=got.sha256,
                precision=precision,  # type: ignore[arg-type]
                tensorrt=host["tensorrt"],
                gpu=host["gpu"],
                compute_capability=host["compute_capability"],
                parity=parity,
            )
        )
    return tuple(records)


class TrtRunners(SpecRunners):
    """ComponentRunners over TensorRT engines, one per component; the loop keeps latents on the GPU."""

    def __init__(self, engines: dict, contracts: dict[str, ComponentContract], device) -> None:
        self.engines = engines
        self.device = device
        self.max_images = min(engines[name].max_rows // contracts[name].rows_per_image for name in engines)

    def run(self, spec: ComponentSpec, *tensors):
        outputs = self.engines[spec.name](dict(zip(spec.input_names, tensors, strict=True)))
        return tuple(outputs[name] for name in spec.output_names)


def open_engines(
    bundle: Bundle, precision: str, device, cache_root: Path | None = None, reporter: Reporter | None = None
) -> tuple[TrtRunners, list[ParityRecord], dict[str, Obtained]]:
    """Engines for every component (shipped, cached or built now); runners, parity, and where each came from."""
    cache = EngineCache(cache_root or default_cache_root(bundle.root))
    engines, parities, obtained = {}, [], {}
    for component in bundle.manifest.components:
        engine, got, parity = ensure_engine(
            bundle.root, bundle.manifest, component, precision, cache, device, reporter
        )
        engines[component] = engine
        parities.append(parity)
        obtained[component] = got
    contracts = {name: record.contract for name, record in bundle.manifest.components.items()}
    return TrtRunners(engines, contracts, device), parities, obtained


# ---------------------------------------------------------------- the tensorrt backend


class TensorRTGenerator(EngineGenerator):
    """The bundle's graphs as TensorRT engines (shipped, cached per TensorRT version and GPU, or built)."""

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
            runners, parities, obtained = open_engines(
                bundle, precision, self.device, Path(engine_cache) if engine_cache else None, reporter
            )
        except (EngineBuildError, EngineRunError) as exc:  # at audit time a failed build is a fallback
            raise BackendUnavailable(first_line(exc)) from None
        failed = [p.summary() for p in parities if not p.passed]
        if failed:
            raise BackendUnavailable(f"TensorRT engines miss their tolerance: {'; '.join(failed)}")
        built = [name for name, got in obtained.items() if got.source.startswith("built")]
        self.note = f"engines built on this host for {', '.join(built)}" if built else None
        self.obtained = obtained
        self.tensorrt_version = str(tensorrt.__version__)
        super().__init__(bundle, runners, batch_size)

    def describe(self) -> BackendInfo:
        import torch

        return BackendInfo(
            backend="tensorrt",
            device=torch.cuda.get_device_name(self.device),
            dtype=self.dtype,
            versions=library_versions(
                tensorrt=self.tensorrt_version,
                bundle_source=self.bundle.manifest.source.digest,
                **engine_versions(self.obtained),
                **{
                    f"engine.{name}.launch": engine.launch_summary()
                    for name, engine in self.loop.runners.engines.items()
                },
            ),
            note=self.note,
        )
