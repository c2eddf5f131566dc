"""Crash-safe file writing and canonical JSON.

Reports may become evidence and batches may be killed at any moment, so a file is
either absent or complete: write to a temporary file in the same directory, fsync,
then rename over the target (atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` so that readers never see a partial file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the writer's host and pid in the name, so a later run can tell a dead writer's leftover
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_writer()}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600; without an explicit mode give what open() would (umask).
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


_TEMP_NAME = re.compile(r"^\..+?\.(?:([0-9a-f]{8})-([0-9]+)\.)?[^.]+\.tmp$")


def _host_tag() -> str:
    """8 hex digits naming this host (a container's hostname in Kubernetes): PIDs are per host."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer() -> str:
    return f"{_host_tag()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_dead_temp_files(directory: str | os.PathLike[str], max_age_s: float = 3600.0) -> int:
    """Remove the temporary files of `atomic_write_bytes` whose writer is dead; return how many.

    A writer killed between creating its temporary file and renaming it (kill -9, OOM, a
    node lost) leaves `.NAME.HOST-PID.XXXX.tmp` behind. One of this host whose PID is no
    longer running is removed; one of another host (or of an older name format) only when
    older than `max_age_s`, since its writer cannot be asked (a report is written in
    milliseconds, so an hour-old temporary file has no live writer). Call it before a run
    writes into a folder (e.g. a batch's reports/, errors/, transcripts/, references/).
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    host, now, removed = _host_tag(), time.time(), 0
    for entry in root.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        tag, pid = match.group(1), match.group(2)
        if tag == host and pid is not None:
            dead = int(pid) != os.getpid() and not _alive(int(pid))
        else:
            try:
                dead = now - entry.stat().st_mtime > max_age_s
            except OSError:
                continue
        if dead:
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace) for hashing and signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streaming sha256, so multi-GB checkpoints hash in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
