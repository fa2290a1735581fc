"""A real forking worker whose Redis shuts down right after its first work-horse exits (tests only).

``python -m tests.worker_redis_dies_after_horse --name N``: the worker of ``backend/worker.py``,
but once the first work-horse has ended (its outcome written to Redis), the worker saves Redis to
disk and shuts it down before its own next call to Redis, as a master killed just then would be.
"""

from __future__ import annotations

import sys

from backend.runner import worker as runtime

_monitor = runtime.JobServiceWorker.monitor_work_horse
_fired = False


def monitor_work_horse(self, job, queue, execution):
    global _fired
    _monitor(self, job, queue, execution)
    if not _fired:
        _fired = True
        self.connection.shutdown(save=True)


runtime.JobServiceWorker.monitor_work_horse = monitor_work_horse

if __name__ == "__main__":
    sys.exit(runtime.main(sys.argv[1:]))
