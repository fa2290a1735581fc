"""A real forking worker whose Redis shuts down in its work-horse, right after the first task
returned and before RQ records the run's end (tests only).

``python -m tests.worker_redis_dies_after_task --name N``: the worker of ``backend/worker.py``,
but the first work-horse whose task returns saves Redis to disk and shuts it down before RQ's
first write of the end, as a master killed just then would be (the end is one of the writes lost).
"""

from __future__ import annotations

import os
import sys

from backend.runner import worker as runtime

_ended = runtime.JobServiceWorker.handle_execution_ended
#: Shut Redis down once per test, not again in the next work-horse once it is back.
MARK = os.environ["REDIS_DIES_MARK"]


def handle_execution_ended(self, job, queue, heartbeat_ttl):
    if self.is_horse and not os.path.exists(MARK):
        open(MARK, "w").close()  # noqa: SIM115 - an empty marker
        self.connection.shutdown(save=True)
    _ended(self, job, queue, heartbeat_ttl)


runtime.JobServiceWorker.handle_execution_ended = handle_execution_ended

if __name__ == "__main__":
    sys.exit(runtime.main(sys.argv[1:]))
