"""One live batch per output folder: OUT/.batch.lock names its holder (pid, host, start).

Two batches on one OUT would audit the same suspects twice and race on summary.json, and
the second would skip reports the first has not finished checking. The lock is created
with O_CREAT|O_EXCL (one creator wins, on local and NFSv3+ file systems) and holds the
holder's pid, host, process start time and a random token. A lock whose holder is dead
(same host, pid gone or reused by another process) is stale and taken over, with a line
saying so; a lock from another host cannot be checked from here, so it holds until its
holder releases it or someone removes it. `--index N` runs (Kubernetes pods writing one
suspect each into a shared OUT) take no lock: they never write the same file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auditor.errors import BadInputError

LOCK_NAME = ".batch.lock"
MAX_LOCK_BYTES = 4096
UNWRITTEN_GRACE_S = 10.0  # an empty lock younger than this is a holder still writing it


def check_out_folder(out: Path) -> None:
    """A symlinked or dangling-symlink --out, or a file in its place, is one line (not mkdir's
    FileExistsError): a link could send the reports, the lock and the signed envelopes elsewhere."""
    if out.is_symlink():
        raise BadInputError(
            f"--out {out}: is a symbolic link (to {os.readlink(out)}); give the real folder's path"
        )
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(
            f"--out {out}: cannot create the folder ({exc.strerror or type(exc).__name__})"
        ) from None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    except OSError:
        return True
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's JSON, or None while it is empty or unreadable (a holder mid-write, or garbage)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_LOCK_BYTES + 1)
    try:
        holder = json.loads(data) if len(data) <= MAX_LOCK_BYTES else None
    except (ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock"
    return f"pid {holder.get('pid')!s:.20} on {holder.get('host')!s:.80}, started {holder.get('started_at')!s:.40}"


def _stale(path: Path, holder: dict[str, Any] | None) -> bool:
    if holder is None:
        try:
            return time.time() - path.lstat().st_mtime > UNWRITTEN_GRACE_S
        except FileNotFoundError:
            return True
    pid = holder.get("pid")
    ticks = holder.get("start_ticks")
    if (
        holder.get("host") != socket.gethostname()
        or isinstance(pid, bool)
        or not isinstance(pid, int)
        or pid <= 0
    ):
        return False  # another host's process cannot be checked from here
    return not _alive(pid, ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None)


@contextlib.contextmanager
def batch_lock(out: Path, log: Callable[[str], None] = lambda _: None) -> Iterator[Path]:
    """Hold OUT/.batch.lock for the block (released on any exit but SIGKILL, whose lock is stale)."""
    check_out_folder(out)
    path = out / LOCK_NAME
    token = secrets.token_hex(16)
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "start_ticks": _start_ticks(os.getpid()),
        "token": token,
    }
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInputError(
                f"--out {out}: cannot create {LOCK_NAME} ({exc.strerror or type(exc).__name__})"
            ) from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(mine) + "\n")
            break
        try:
            holder = _read_holder(path)
        except FileNotFoundError:
            continue  # released meanwhile: try again
        if not _stale(path, holder):
            other_host = holder is not None and holder.get("host") != socket.gethostname()
            hint = f"; if it is no longer running, remove {path}" if other_host or holder is None else ""
            raise BadInputError(
                f"--out {out}: in use by another batch ({_describe(holder)}; lock {path}){hint}; "
                "wait for it or give another --out"
            )
        # Stale: move it aside under a name of our own; only one taker's rename succeeds.
        aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{token[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        moved = _read_holder(aside) if aside.exists() else None
        if moved != holder:  # another taker's fresh lock was renamed in between: put it back
            with contextlib.suppress(OSError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            continue
        aside.unlink(missing_ok=True)
        log(f"--out {out}: took over a stale lock ({_describe(holder)}: not running)")
    else:
        raise BadInputError(
            f"--out {out}: could not take {path} (other batches keep racing for it); try again"
        )
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if (_read_holder(path) or {}).get("token") == token:
                path.unlink()
