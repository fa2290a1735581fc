"""What the harness knows of processes: the /proc reads that find a run's processes by its
marker, and the records of a worker process, of a task's execution and of a kill."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.settings import MARKER_ENV


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(part) for part in handle.read().split())
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def marked_pids(marker: str) -> list[int]:
    """Every live process whose environment carries ``CHAOS_RUN_MARKER=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            if needle in environ.split(b"\0") and pid_alive(int(entry)):
                found.append(int(entry))
    return found


@dataclass
class WorkerProc:
    name: str
    process: subprocess.Popen
    log_path: Path
    started_at: float
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Execution:
    """One run of a task, from the tasks' execution log."""

    job_id: str
    attempt: int
    pid: int
    ppid: int
    started: float
    ended: float | None = None


@dataclass
class Kill:
    """One SIGKILL of a worker: when, which process, and what it was running."""

    at: float
    worker: str
    pid: int
    horses: list[int]
    #: job_id -> the attempt it was on when its worker died.
    inflight: dict[str, int] = field(default_factory=dict)
