"""Child processes of this process: whether a recorded pid is still the same live process, and reaping.

A run's status.json records its process's pid and start time (``proc_start_marker``), so a pid the
system has since given to another process is never mistaken for the run (core.jobs.manager).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Popen handles of children started by this process, so finished children are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def proc_start_marker(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    # fields[0] is field 3 (state); starttime is field 22
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # gone, or a zombie: finished
    return fields[19]


def _reap(pid: int | None) -> None:
    if pid is None:
        return
    child = _CHILDREN.get(int(pid))
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(int(pid), None)


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True while the process exists, is not a zombie and (if a marker is given) is the same process."""
    if not pid:
        return False
    _reap(pid)
    now = proc_start_marker(int(pid))
    if now is None:
        if not Path("/proc").is_dir():  # no procfs (macOS): fall back on signal 0
            try:
                os.kill(int(pid), 0)
                return True
            except OSError:
                return False
        return False
    return marker is None or str(marker) == now
