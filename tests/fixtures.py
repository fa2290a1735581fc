"""Tasks used by the tests; top-level so that real workers can import them."""

from __future__ import annotations

import os
import signal
import time

from backend.tasks import current_job, task
from tests.gates import wait_for_gate


@task("reserved_names")
def reserved_names(job_id, timeout, ttl, description, meta, retry, depends_on=None, result_ttl=None):
    """Takes every parameter name that RQ would use as its own option."""
    return {
        "job_id": job_id,
        "timeout": timeout,
        "ttl": ttl,
        "description": description,
        "meta": meta,
        "retry": retry,
        "depends_on": depends_on,
        "result_ttl": result_ttl,
    }


@task("add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task("whoami")
def whoami() -> dict:
    """Return the job context as the task sees it."""
    job = current_job()
    return {"job_id": job.job_id, "attempt": job.attempt, "pid": os.getpid()}


@task("crawl")
def crawl(steps: int = 5, delay: float = 0.3) -> dict:
    """Report progress every ``delay`` seconds, ``steps`` times."""
    job = current_job()
    for step in range(1, steps + 1):
        time.sleep(delay)
        job.progress(step * 100 // steps, f"step {step}")
    return {"steps": steps}


@task("wait_for_file")
def wait_for_file(path: str, timeout: float = 120.0) -> dict:
    """Run until ``path`` exists (a test opens the gate when it is done with the running job)."""
    wait_for_gate(path, timeout)
    return {"waited_for": path}


@task("flaky")
def flaky(marker: str, failures: int = 1) -> str:
    """Fail the first ``failures`` runs (counted in the file ``marker``), then succeed."""
    with open(marker, "a+") as handle:
        handle.seek(0)
        runs = len(handle.read().splitlines())
        handle.write("run\n")
    if runs < failures:
        raise RuntimeError(f"flaky failure {runs + 1}")
    return "ok"


@task("one_at_a_time", concurrency=1)
def one_at_a_time(seconds: float = 0.3) -> dict:
    """Sleep; at most one runs at once across all workers."""
    started = time.time()
    time.sleep(seconds)
    return {"started": started, "ended": time.time()}


@task("kill_own_worker")
def kill_own_worker() -> None:
    """SIGKILL the process that runs it (under a SimpleWorker, the worker): a poison pill."""
    os.kill(os.getpid(), signal.SIGKILL)
