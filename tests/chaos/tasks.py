"""Tasks for the chaos scenarios; top-level so that real workers import them (TASK_MODULES).

Every execution appends one line at its start and one at its end to the file named by
``CHAOS_EXEC_LOG``, so a test can count exactly how often each job ran, in which process
(``pid``), under which worker process (``ppid``: the forking worker's main process), and
whether that execution got to its end:

    start <job_id> <attempt> <pid> <ppid> <unix time>
    end <job_id> <attempt> <pid> <ppid> <unix time>
"""

from __future__ import annotations

import os
import subprocess
import time

from backend.tasks import current_job, task
from tests.gates import wait_for_gate

EXEC_LOG_ENV = "CHAOS_EXEC_LOG"


def _record(event: str) -> None:
    path = os.environ.get(EXEC_LOG_ENV)
    if not path:
        return
    job = current_job()
    line = f"{event} {job.job_id} {job.attempt} {os.getpid()} {os.getppid()} {time.time():.3f}\n"
    # One write of one short line to a file opened with O_APPEND: lines never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task("chaos_sleep")
def chaos_sleep(seconds: float = 0.5, tag: str | None = None, first_attempt_seconds: float | None = None) -> dict:
    """Sleep ``seconds`` (``first_attempt_seconds`` on attempt 1 when given), logging start and end."""
    _record("start")
    attempt = current_job().attempt
    duration = first_attempt_seconds if first_attempt_seconds is not None and attempt == 1 else seconds
    time.sleep(duration)
    _record("end")
    return {"slept": duration, "tag": tag, "attempt": attempt}


@task("chaos_wait_for_file")
def chaos_wait_for_file(path: str, timeout: float = 120.0) -> dict:
    """Run until ``path`` exists (the scenario opens the gate), logging start and end."""
    _record("start")
    wait_for_gate(path, timeout)
    _record("end")
    return {"waited_for": path}


@task("chaos_subprocess")
def chaos_subprocess(seconds: float = 30.0) -> dict:
    """Run ``sleep <seconds>`` as a child process (a task that shells out), logging start and end."""
    _record("start")
    subprocess.run(["sleep", str(seconds)], check=True)
    _record("end")
    return {"slept": seconds}


@task("chaos_count")
def chaos_count(to: int = 100, delay: float = 0.1) -> dict:
    """Count to ``to`` from the last checkpoint, saving one after each step; every step it runs
    appends ``step <job_id> <attempt> <step> <pid> <unix time>`` to the execution log."""
    _record("start")
    job = current_job()
    state = job.checkpoint_state
    done = state["done"] if state else 0
    for step in range(done + 1, to + 1):
        _append(f"step {job.job_id} {job.attempt} {step} {os.getpid()} {time.time():.3f}\n")
        time.sleep(delay)
        job.checkpoint({"done": step})
    _record("end")
    return {"resumed_after": done, "attempt": job.attempt}


def _append(line: str) -> None:
    path = os.environ.get(EXEC_LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
