"""Where TensorRT plans come from, on the CPU: keys, the bundle's own plans, the cache, the build lock,
the shared timing cache, and the engine-side rules that need no GPU (profile choice, validation in
slices). TrtEngine's run path itself is driven through a stand-in TensorRT in test_trt_api.py."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from auditor.backends.engines import engine_cache
from auditor.backends.engines.bundle import EngineRecord, FileRecord, read_manifest
from auditor.backends.engines.engine_cache import (
    EngineCache,
    LockTimeout,
    ShippedPlans,
    TimingCacheFile,
    engine_key,
    engine_versions,
    graph_digest,
    obtain,
    timing_cache_path,
)
from auditor.fileio import sha256_bytes

HOST = {"tensorrt": "11.4.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from export.testing import exported_bundle

    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture(scope="module")
def manifest(bundle):
    return read_manifest(bundle)


def _with_data_file(manifest, sha: str):
    """The manifest as if the UNet's weights lived in unet/model.onnx.data (fp32 SD 1.5 does)."""
    unet = manifest.components["unet"]
    files = (*unet.files, FileRecord(path="unet/model.onnx.data", sha256=sha, size=1))
    components = dict(manifest.components) | {"unet": unet.model_copy(update={"files": files})}
    return manifest.model_copy(update={"components": components})


def test_key_covers_the_external_weights(manifest):
    """Two fine-tunes of one base share model.onnx and differ in model.onnx.data: their keys must differ."""
    contract = manifest.components["unet"].contract
    a, b = _with_data_file(manifest, "a" * 64), _with_data_file(manifest, "b" * 64)
    assert graph_digest(a, "unet", "unet/model.onnx") != graph_digest(b, "unet", "unet/model.onnx")
    assert graph_digest(a, "unet", "unet/model.onnx") == graph_digest(a, "unet", "unet/model.onnx")
    assert graph_digest(manifest, "unet", "unet/model.onnx") != graph_digest(a, "unet", "unet/model.onnx")
    key = lambda m: engine_key(graph_digest(m, "unet", "unet/model.onnx"), HOST, "fp32", contract)  # noqa: E731
    assert key(a) != key(b)
    with pytest.raises(ValueError, match="not among"):
        graph_digest(manifest, "unet", "unet/missing.onnx")


def test_key_covers_host_precision_and_profiles(manifest):
    contract = manifest.components["unet"].contract
    key = engine_key("a" * 64, HOST, "fp16", contract)
    others = [
        engine_key("b" * 64, HOST, "fp16", contract),
        engine_key("a" * 64, HOST | {"tensorrt": "10.13.0"}, "fp16", contract),
        engine_key("a" * 64, HOST | {"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "fp16", contract),
        engine_key("a" * 64, HOST, "fp32", contract),
        engine_key("a" * 64, HOST, "fp16", contract.model_copy(update={"profiles": contract.profiles[:1]})),
    ]
    assert len({key, *others}) == 6 and all(len(k) == 64 for k in others)


def test_cache_load_store_and_corrupt_plans(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = "k" * 64
    assert cache.load("unet", key) is None
    plan = cache.store("unet", key, b"engine bytes", {"component": "unet"})
    assert cache.load("unet", key) == b"engine bytes"
    assert cache.load("unet", "j" * 64) is None
    plan.write_bytes(b"engine bytez")  # corrupt plan: a miss
    assert cache.load("unet", key) is None


def _shipping(manifest, root: Path, data: bytes, key: str):
    """A bundle root whose manifest records `data` as the UNet's engine under `key`."""
    rel = f".engines/unet-{key[:16]}.plan"
    (root / ".engines").mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    record = EngineRecord(
        component="unet",
        cache_key=key,
        path=rel,
        sha256=sha256_bytes(data),
        precision="fp16",
        tensorrt=HOST["tensorrt"],
        gpu=HOST["gpu"],
        compute_capability=HOST["compute_capability"],
        parity=manifest.components["unet"].parity,
    )
    return manifest.model_copy(update={"engines": (record,)})


def _never_build() -> bytes:
    raise AssertionError("built although a usable plan was at hand")


def test_a_read_only_bundle_uses_the_engines_it_ships(manifest, tmp_path):
    """The cache lies elsewhere (the bundle is mounted read-only): the bundle's own plan still serves."""
    key = "e" * 64
    shipped = _shipping(manifest, tmp_path / "bundle", b"shipped plan", key)
    cache = EngineCache(tmp_path / "user-cache" / "engines")
    got = obtain(
        "unet",
        key,
        shipped=ShippedPlans(tmp_path / "bundle", shipped),
        cache=cache,
        load=lambda data: data,
        usable=lambda value: True,
        build=_never_build,
    )
    assert (got.value, got.source, got.sha256) == (b"shipped plan", "bundle", sha256_bytes(b"shipped plan"))
    assert not cache.root.exists()  # nothing was built or written


def test_shipped_plans_are_trusted_only_through_the_manifest(manifest, tmp_path):
    key = "e" * 64
    root = tmp_path / "bundle"
    shipped = _shipping(manifest, root, b"shipped plan", key)
    plan = root / shipped.engines[0].path
    plan.write_bytes(b"swapped plan")  # a sidecar could be rewritten to match; the manifest cannot
    plan.with_suffix(".json").write_text(f'{{"key": "{key}", "sha256": "{sha256_bytes(b"swapped plan")}"}}')
    assert ShippedPlans(root, shipped).load("unet", key) is None
    got = obtain(
        "unet",
        key,
        shipped=ShippedPlans(root, shipped),
        cache=EngineCache(tmp_path / "cache"),
        load=lambda data: data,
        usable=lambda value: True,
        build=lambda: b"fresh plan",
    )
    assert (got.value, got.source) == (b"fresh plan", "built")


def test_a_plan_that_misses_parity_is_a_miss_and_is_rebuilt(tmp_path):
    """A cached engine built from another fine-tune (or a stale one) fails its parity check: rebuild, not fall back."""
    cache = EngineCache(tmp_path / "engines")
    key = "p" * 64
    cache.store("unet", key, b"stale plan", {"component": "unet"})
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"good plan"

    got = obtain(
        "unet",
        key,
        shipped=None,
        cache=cache,
        load=lambda data: data,
        usable=lambda value: value == b"good plan",
        build=build,
    )
    assert (got.value, got.source, len(builds)) == (b"good plan", "built", 1)
    assert cache.load("unet", key) == b"good plan"  # the next process gets the good one
    again = obtain(
        "unet", key, shipped=None, cache=cache, load=lambda d: d, usable=lambda v: True, build=_never_build
    )
    assert again.source == "cache"


def test_undeserializable_plans_are_misses(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = "d" * 64
    cache.store("vae_decoder", key, b"other TensorRT version", {})
    got = obtain(
        "vae_decoder",
        key,
        shipped=None,
        cache=cache,
        load=lambda data: None if data.startswith(b"other") else data,
        usable=lambda value: True,
        build=lambda: b"rebuilt",
    )
    assert (got.value, got.source) == (b"rebuilt", "built")


def _build_in_child(root: str, log: str, start_at: float) -> None:
    while time.time() < start_at:  # line the processes up
        time.sleep(0.005)

    def build() -> bytes:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return b"plan"

    cache = EngineCache(Path(root), poll_s=0.05, heartbeat_s=0.1)
    got = obtain(
        "unet", "c" * 64, shipped=None, cache=cache, load=lambda d: d, usable=lambda v: True, build=build
    )
    assert got.value == b"plan"


def test_parallel_processes_build_an_engine_once(tmp_path):
    """Pods of one Indexed Job sharing a cache volume: one builds, the others wait and load its plan."""
    context = multiprocessing.get_context("fork")
    log = tmp_path / "builds.log"
    start_at = time.time() + 0.5
    procs = [
        context.Process(target=_build_in_child, args=(str(tmp_path / "engines"), str(log), start_at))
        for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert not list((tmp_path / "engines").glob("*.lock"))


def test_a_dead_holders_lock_is_taken_over_and_a_live_one_waited_for(tmp_path):
    cache = EngineCache(tmp_path / "engines", wait_s=0.3, stale_s=5.0, poll_s=0.05)
    key = "l" * 64
    lock = cache.plan_path("unet", key).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("{}")
    with pytest.raises(LockTimeout, match="building this engine"):
        obtain(
            "unet",
            key,
            shipped=None,
            cache=cache,
            load=lambda d: d,
            usable=lambda v: True,
            build=lambda: b"x",
        )
    old = time.time() - 60
    os.utime(lock, (old, old))  # no heartbeat for a minute: its holder died
    got = obtain(
        "unet", key, shipped=None, cache=cache, load=lambda d: d, usable=lambda v: True, build=lambda: b"x"
    )
    assert got.source == "built" and not lock.exists()


def test_an_unwritable_cache_builds_without_storing(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_cache, "writable", lambda folder: False)
    cache = EngineCache(tmp_path / "ro")
    got = obtain(
        "unet",
        "u" * 64,
        shipped=None,
        cache=cache,
        load=lambda d: d,
        usable=lambda v: True,
        build=lambda: b"x",
    )
    assert got.source == "built-uncached" and not cache.root.exists()


def test_default_cache_root_moves_off_a_read_only_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert engine_cache.default_cache_root(bundle) == bundle / ".engines"
    monkeypatch.setattr(engine_cache, "writable", lambda folder: not str(folder).startswith(str(bundle)))
    monkeypatch.setenv("T2I_AUDITOR_CACHE", str(tmp_path / "cache"))
    assert engine_cache.default_cache_root(bundle) == tmp_path / "cache" / "engines"


def test_a_report_records_each_engines_key_and_plan_digest():
    got = engine_cache.Obtained(value=None, source="bundle", sha256="f" * 64, key="k" * 64)
    versions = engine_versions({"unet": got})
    assert versions == {"engine.unet": f"key {'k' * 64} plan sha256 {'f' * 64} (bundle)"}


# ---------------------------------------------------------------- engine rules without a GPU


class OrtAsEngine:
    """Stands in for TrtEngine: a real ONNX Runtime session behind TrtEngine's row limits (`choose_profile`)."""

    def __init__(self, path: Path, output: str, profile_rows: list[int]) -> None:
        import torch

        from auditor.backends.engines.ort import make_session

        self.session = make_session(path)
        self.output = output
        self.profile_rows = profile_rows
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    @property
    def max_rows(self) -> int:
        return max(self.profile_rows)

    def __call__(self, feeds):
        import torch

        from auditor.backends.engines.trt import choose_profile

        rows = int(next(iter(feeds.values())).shape[0])
        choose_profile(self.profile_rows, rows)  # raises as TrtEngine does
        self.calls.append(rows)
        out = self.session.run([self.output], {k: v.numpy() for k, v in feeds.items()})[0]
        return {self.output: torch.from_numpy(out)}


@pytest.mark.parametrize("component", ["text_encoder", "vae_decoder"])
def test_validation_runs_within_engines_built_for_batch_size_1(bundle, manifest, component):
    """--batch-sizes 1: the VAE engine takes 1 row, the text encoder 2; validation holds 3 rows."""
    from auditor.backends.engines.trt import EngineBuildError, engine_parity

    record = manifest.components[component]
    rows = record.contract.rows_per_image  # the profile of image batch 1
    engine = OrtAsEngine(bundle / record.onnx, record.contract.output_names[0], [rows])
    with pytest.raises(EngineBuildError, match="exceed the engine's largest profile"):
        engine({n: __import__("torch").zeros((3, 1)) for n in record.contract.input_names})
    parity = engine_parity(
        engine, record.contract, bundle / record.validation.path, "fp32", record.parity.seed
    )
    assert parity.passed and parity.batch == 3, parity
    assert max(engine.calls) <= rows and sum(engine.calls) == 3


def test_profile_choice_takes_the_smallest_that_fits():
    from auditor.backends.engines.trt import choose_profile

    assert choose_profile([2, 32, 16], 2) == 0
    assert choose_profile([2, 32, 16], 3) == 2
    assert choose_profile([2, 32, 16], 32) == 1


# ---------------------------------------------------------------- the shared timing cache


def test_one_timing_cache_per_tensorrt_version_and_compute_capability(tmp_path):
    """Keyed by what makes tactic timings comparable; two GPUs of one architecture share it."""
    path = timing_cache_path(tmp_path, HOST)
    assert path.parent == tmp_path and path.name == "timing-trt11.4.0-sm90.cache"
    assert timing_cache_path(tmp_path, HOST | {"gpu": "NVIDIA H100 80GB HBM3"}) == path
    assert timing_cache_path(tmp_path, HOST | {"tensorrt": "10.13.0.35"}) != path
    assert timing_cache_path(tmp_path, HOST | {"compute_capability": "8.9"}) != path
    assert EngineCache(tmp_path).timing_cache(HOST).path == path
    assert timing_cache_path(tmp_path, HOST | {"tensorrt": "../../x"}).parent == tmp_path  # no path tricks


def _merge_in_child(path: str, entry: str, start_at: float) -> None:
    while time.time() < start_at:
        time.sleep(0.005)

    def merge(current: bytes) -> bytes:
        entries = set(current.decode().split()) | {entry}
        time.sleep(0.05)  # a slow serialize: the window in which an unlocked writer loses entries
        return "\n".join(sorted(entries)).encode()

    assert TimingCacheFile(Path(path), poll_s=0.01).update(merge)


def test_concurrent_builders_keep_every_timing_cache_entry(tmp_path):
    """Builds finishing at once (the pods of an Indexed Job) each merge into what the file holds now."""
    path = tmp_path / "engines" / "timing-trt11.4.0-sm90.cache"
    path.parent.mkdir()
    path.write_bytes(b"from-an-earlier-build")
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 0.3
    procs = [
        context.Process(target=_merge_in_child, args=(str(path), f"pod-{i}", start_at)) for i in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert path.read_bytes().decode().split() == ["from-an-earlier-build", "pod-0", "pod-1", "pod-2", "pod-3"]
    assert not list(path.parent.glob("*.lock")) and not list(path.parent.glob("*.tmp*"))


def test_a_timing_cache_that_cannot_be_written_costs_only_the_head_start(tmp_path, monkeypatch):
    shared = TimingCacheFile(tmp_path / "missing" / "timing.cache")
    assert shared.read() == b""
    monkeypatch.setattr(engine_cache, "writable", lambda folder: False)
    assert shared.update(lambda current: b"x") is False and not shared.path.exists()


# ---------------------------------------------------------------- ensure_engine's failure names


@pytest.mark.parametrize("fresh", ["loads", "does not deserialize", "refuses a call"])
def test_ensure_engine_rebuilds_stale_plans_and_names_a_fresh_failure(
    bundle, manifest, tmp_path, monkeypatch, fresh
):
    """A cached plan that does not deserialize is a miss (rebuilt); a fresh plan that does not, or whose
    validation a TensorRT call refuses, raises the named error, not 'cannot deserialize'."""
    import torch

    from auditor.backends.engines import tensorrt_backend as backend
    from auditor.backends.engines.trt import EngineDeserializeError, TensorRTCallError

    class Engine:
        def __init__(self, data, device) -> None:
            if data == b"stale" or (data == b"fresh" and fresh == "does not deserialize"):
                raise EngineDeserializeError(
                    f"Runtime.deserialize_cuda_engine({len(data)} bytes) returned None"
                )
            self.data = data

    def parity(engine, contract, validation, precision, seed):
        if fresh == "refuses a call":
            raise TensorRTCallError(
                "set_input_shape(sample, (32, 4, 8, 8))", "refused: inside profile 1's range"
            )
        return manifest.components["unet"].parity

    timing_paths = []

    def build(path, contract, precision, timing):
        timing_paths.append(timing)
        return b"fresh"

    monkeypatch.setattr(backend, "host_identity", lambda index=0: HOST)
    monkeypatch.setattr(backend, "TrtEngine", Engine)
    monkeypatch.setattr(backend, "engine_parity", parity)
    monkeypatch.setattr(backend, "build_engine", build)
    cache = EngineCache(tmp_path / "engines")
    contract = manifest.components["unet"].contract
    key = engine_key(graph_digest(manifest, "unet", "unet/model.onnx"), HOST, "fp32", contract)
    cache.store("unet", key, b"stale", {})
    args = (bundle, manifest, "unet", "fp32", cache, torch.device("cpu"))
    if fresh == "loads":
        engine, got, record = backend.ensure_engine(*args)
        assert engine.data == b"fresh" and got.source == "built" and record.passed
    elif fresh == "does not deserialize":
        with pytest.raises(
            EngineDeserializeError, match=r"unet: the plan TensorRT just built does not load: Runtime"
        ):
            backend.ensure_engine(*args)
    else:
        with pytest.raises(TensorRTCallError, match=r"set_input_shape\(sample"):
            backend.ensure_engine(*args)
    assert timing_paths == [cache.root / "timing-trt11.4.0-sm90.cache"]  # the one per-host timing cache
