"""``backend/worker.py`` with timers around the phases of each job, for ``python -m bench.profile phases``.

It wraps (never changes) the worker's classes: each batch of reports the sender thread posts,
our ``prepare_job_execution`` (RQ's bookkeeping plus the fence check), our ``perform_job`` and,
for the forking worker, the parent's fork and wait. Each
measurement is appended as a JSON line to the file named by ``BENCH_TIMINGS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from rq.worker.worker_classes import Worker  # noqa: E402

import backend.runner.worker as service_worker  # noqa: E402
from backend.runner.reporter import Reporter  # noqa: E402


def _log(what: str, seconds: float) -> None:
    with open(os.environ["BENCH_TIMINGS"], "a") as out:
        out.write(json.dumps({"what": what, "pid": os.getpid(), "seconds": seconds}) + "\n")


def _timed(owner, name: str, label) -> None:
    original = getattr(owner, name)

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _log(label(self, args) if callable(label) else label, time.perf_counter() - t0)

    setattr(owner, name, wrapper)


_timed(Reporter, "_post_batch", "sender thread: one batch of reports (no job waits)")
_timed(service_worker.ReportingMixin, "prepare_job_execution", "prepare_job_execution: RQ's, then the fence")
_timed(service_worker.ReportingMixin, "perform_job", "perform_job: the task, reports queued")
_timed(Worker, "fork_work_horse", "parent: fork")
_timed(Worker, "monitor_work_horse", "parent: wait for the work horse")
_timed(Worker, "execute_job", "parent: execute_job, whole job")

if __name__ == "__main__":
    sys.argv[0] = "backend/worker.py"
    sys.exit(service_worker.main())
