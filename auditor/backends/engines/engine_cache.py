"""Where TensorRT plans come from: the bundle's own (checked against its manifest), a cache, or a build.

Pure Python (no TensorRT, no CUDA), so every rule here is tested on the CPU:

- **Key.** An engine is valid only for the graph it was built from (the ONNX file *and*
  its external weights, `model.onnx.data`: two fine-tunes of one base differ only
  there), the TensorRT version, the GPU and its compute capability, the precision and
  the shape profiles. `engine_key` hashes all of them.
- **Order.** `obtain` tries the plans the bundle ships (`bundle.json`'s `engines`,
  each checked against the manifest's sha256, so a read-only bundle mounted into a
  pod uses them), then the writable cache (a plan and a sidecar JSON with its key and
  sha256), then builds. A plan that fails to deserialize, or that misses its parity
  check here, is a miss like an absent one: it is rebuilt once, and only a freshly
  built engine that still misses is reported as a miss (the caller falls back).
- **Lock.** Parallel processes (the pods of an Indexed Job sharing one cache volume)
  that miss the same engine build it once: a lock file created with O_EXCL beside the
  plan, refreshed by a heartbeat while the holder builds; waiters re-check the cache
  when it is released, and take over a lock whose heartbeat stopped (a killed pod).
  O_EXCL creation is atomic on local filesystems and on NFSv3+, unlike flock on some
  network filesystems.
- **Timing cache.** One TensorRT timing cache per host kind, shared by every build in a
  cache folder: `timing-trt<version>-sm<compute capability>.cache` (`timing_cache_path`),
  read into every builder config and, after a build, merged with what other builders
  saved meanwhile and replaced atomically under the same kind of lock
  (`TimingCacheFile.update`), so two pods finishing builds at once both keep their
  entries.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.fileio import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes

if TYPE_CHECKING:
    from auditor.backends.engines.bundle import BundleManifest
    from auditor.backends.engines.components import ComponentContract

# hidden: `auditor.identity.hash_model` skips dot-names, so building engines for a new GPU
# does not change the bundle's own digest (the one an audit report cites for it)
ENGINE_DIR = ".engines"
KEY_SCHEME = "t2i-auditor-trt-engine-v3"  # v3: the key covers external weights (v2 engines are misses)


def graph_digest(manifest: BundleManifest, component: str, graph: str) -> str:
    """sha256 over the manifest's digests of `graph` and of its external data file, when it has one."""
    record = manifest.components[component]  # type: ignore[index]
    digests = {f.path: f.sha256 for f in record.files}
    if graph not in digests:
        raise ValueError(f"{component}: {graph} is not among the bundle's files")
    parts = {graph: digests[graph]}
    data = graph + ".data"
    if data in digests:
        parts[data] = digests[data]
    return sha256_bytes(canonical_json(parts))


def engine_key(graph_sha256: str, host: dict[str, str], precision: str, contract: ComponentContract) -> str:
    document = {
        "scheme": KEY_SCHEME,
        "graph_sha256": graph_sha256,
        "tensorrt": host["tensorrt"],
        "gpu": host["gpu"],
        "compute_capability": host["compute_capability"],
        "precision": precision,
        "profiles": [p.model_dump(mode="json") for p in contract.profiles],
    }
    return sha256_bytes(canonical_json(document))


def writable(folder: Path) -> bool:
    """Whether files can be created in `folder` (made if missing). Tries it: os.access says yes
    to root on a read-only mount."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def default_cache_root(bundle_root: Path) -> Path:
    """The bundle's own .engines/ folder when writable, else $T2I_AUDITOR_CACHE/engines (~/.cache)."""
    target = bundle_root / ENGINE_DIR
    if writable(target):
        return target
    base = Path(os.environ.get("T2I_AUDITOR_CACHE") or Path.home() / ".cache" / "t2i-auditor")
    return base / "engines"


class LockTimeout(Exception):
    """Another process held the build lock past the wait limit with a live heartbeat."""


@contextmanager
def file_lock(
    path: Path, *, wait_s: float, stale_s: float, heartbeat_s: float, poll_s: float, what: str = "this engine"
) -> Iterator[None]:
    """Hold `path` (created with O_EXCL) while the block runs, refreshed by a heartbeat; take over
    a lock whose heartbeat is older than `stale_s` (a killed holder); LockTimeout after `wait_s`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            if age > stale_s:
                path.unlink(missing_ok=True)  # its holder died without releasing it
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"{path}: another process has been building {what} for over {wait_s:.0f} s"
                ) from None
            time.sleep(poll_s)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                os.utime(path)
            except OSError:
                return

    thread = threading.Thread(target=beat, name="engine-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


def timing_cache_path(root: Path, host: dict[str, str]) -> Path:
    """The one timing cache of TensorRT version x compute capability in the cache folder `root`."""
    version = "".join(c for c in host["tensorrt"] if c.isalnum() or c in ".-")
    capability = "".join(c for c in host["compute_capability"] if c.isdigit())
    return Path(root) / f"timing-trt{version}-sm{capability}.cache"


class TimingCacheFile:
    """A timing cache file shared by the builders of one host kind: read at build start, merged and
    replaced atomically under `<file>.lock` after the build (no builder's entries are lost)."""

    def __init__(
        self, path: Path, *, wait_s: float = 120.0, stale_s: float = 60.0, poll_s: float = 0.05
    ) -> None:
        self.path = Path(path)
        self.wait_s, self.stale_s, self.poll_s = wait_s, stale_s, poll_s

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    def update(self, merge: Callable[[bytes], bytes]) -> bool:
        """Write `merge(what the file holds now)`; False when the folder cannot be written (the next
        build only loses its head start) or the lock stays held past the wait."""
        if not writable(self.path.parent):
            return False
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            with file_lock(
                lock,
                wait_s=self.wait_s,
                stale_s=self.stale_s,
                heartbeat_s=max(self.stale_s / 4, 0.05),
                poll_s=self.poll_s,
                what="the timing cache",
            ):
                atomic_write_bytes(self.path, merge(self.read()), mode=0o644)
        except (OSError, LockTimeout):
            return False
        return True


class EngineCache:
    """`<root>/<component>-<key[:16]>.plan` + `.json` (full key, sha256 of the plan) + `.lock` while building."""

    def __init__(
        self,
        root: Path,
        *,
        wait_s: float = 3600.0,
        stale_s: float = 180.0,
        heartbeat_s: float = 20.0,
        poll_s: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.wait_s, self.stale_s, self.heartbeat_s, self.poll_s = wait_s, stale_s, heartbeat_s, poll_s

    def plan_path(self, component: str, key: str) -> Path:
        return self.root / f"{component}-{key[:16]}.plan"

    def load(self, component: str, key: str) -> bytes | None:
        plan = self.plan_path(component, key)
        try:
            info = json.loads(plan.with_suffix(".json").read_text(encoding="utf-8"))
            data = plan.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("key") != key or info.get("sha256") != sha256_bytes(data):
            return None
        return data

    def store(self, component: str, key: str, data: bytes, meta: dict) -> Path:
        plan = self.plan_path(component, key)
        atomic_write_bytes(plan, data, mode=0o644)
        meta = meta | {"key": key, "sha256": sha256_bytes(data)}
        atomic_write_text(plan.with_suffix(".json"), json.dumps(meta, indent=2), mode=0o644)
        return plan

    def lock(self, component: str, key: str):
        """Hold `<plan>.lock` (O_EXCL) while building; steal it once its heartbeat is older than stale_s."""
        return file_lock(
            self.plan_path(component, key).with_suffix(".lock"),
            wait_s=self.wait_s,
            stale_s=self.stale_s,
            heartbeat_s=self.heartbeat_s,
            poll_s=self.poll_s,
        )

    def timing_cache(self, host: dict[str, str]) -> TimingCacheFile:
        """This folder's one timing cache for `host`'s TensorRT version and compute capability."""
        return TimingCacheFile(timing_cache_path(self.root, host))


class ShippedPlans:
    """The plans a bundle ships (`bundle.json` `engines`), trusted only through the manifest's sha256."""

    def __init__(self, root: Path, manifest: BundleManifest) -> None:
        self.root = root
        self.records = {(e.component, e.cache_key): e for e in manifest.engines}

    def load(self, component: str, key: str) -> bytes | None:
        record = self.records.get((component, key))
        if record is None:
            return None
        try:
            data = (self.root / record.path).read_bytes()
        except OSError:
            return None
        return data if sha256_bytes(data) == record.sha256 else None


@dataclass
class Obtained:
    """An engine and where its plan came from: "bundle", "cache", "built" (stored) or "built-uncached"."""

    value: Any
    source: str
    sha256: str
    key: str


def obtain(
    component: str,
    key: str,
    *,
    shipped: ShippedPlans | None,
    cache: EngineCache,
    load: Callable[[bytes], Any | None],
    usable: Callable[[Any], bool],
    build: Callable[[], bytes],
    meta: dict | None = None,
) -> Obtained:
    """The first usable engine of: the bundle's plan, the cache's, a fresh build (see module doc).

    `load(plan)` deserializes (None: it cannot); `usable(engine)` runs its parity check. A
    freshly built engine is returned even when not usable: the caller reports the miss.
    """

    def first_usable(source: str, data: bytes | None) -> Obtained | None:
        if data is None:
            return None
        value = load(data)
        if value is None or not usable(value):
            return None
        return Obtained(value, source, sha256_bytes(data), key)

    found = first_usable("bundle", shipped.load(component, key) if shipped else None)
    found = found or first_usable("cache", cache.load(component, key))
    if found:
        return found
    if not writable(cache.root):
        data = build()
        return Obtained(load(data), "built-uncached", sha256_bytes(data), key)
    with cache.lock(component, key):
        found = first_usable("cache", cache.load(component, key))  # built by another process meanwhile
        if found:
            return found
        data = build()
        cache.store(component, key, data, meta or {"component": component})
    return Obtained(load(data), "built", sha256_bytes(data), key)


def engine_versions(obtained: dict[str, Obtained]) -> dict[str, str]:
    """What a report records of the engines that ran: per component the cache key and the plan's sha256."""
    return {
        f"engine.{name}": f"key {o.key} plan sha256 {o.sha256} ({o.source})" for name, o in obtained.items()
    }
