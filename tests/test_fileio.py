"""Crash-safe writes: a killed writer's temporary file is recognized and removed on the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from auditor.fileio import _host_tag, atomic_write_bytes, remove_dead_temp_files

_KILLED_WRITER = """
import os, sys, time
os.fsync = lambda fd: time.sleep(60)  # stuck between creating the temporary file and renaming it
from auditor.fileio import atomic_write_bytes
atomic_write_bytes(sys.argv[1], b"half a report")
"""


def test_a_killed_writers_temporary_file_is_removed_and_nothing_else(tmp_path):
    target = tmp_path / "reports" / "a.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env)
    deadline = time.monotonic() + 30
    while not list(target.parent.glob(".a.json.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    live = remove_dead_temp_files(target.parent)  # its writer is still running: kept
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    leftovers = list(target.parent.glob(".a.json.*.tmp"))
    assert live == 0 and len(leftovers) == 1 and f"{_host_tag()}-{proc.pid}." in leftovers[0].name
    atomic_write_bytes(target.parent / "b.json", b"{}")  # a finished write, and other files, stay
    (target.parent / "notes.tmp").write_text("not ours")
    other_host = target.parent / ".c.json.0123abcd-1.x1y2.tmp"
    other_host.write_text("a writer on another host, maybe alive")
    old = target.parent / ".d.json.k3j4h5.tmp"  # the name format before the writer was in it
    old.write_text("")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_dead_temp_files(target.parent) == 2
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["b.json", "notes.tmp", other_host.name])
    assert remove_dead_temp_files(tmp_path / "absent") == 0
