"""A real worker whose Redis shuts down right after the first task returned, before RQ records the
run's end, while the API stops answering reports (tests only).

``python -m tests.worker_redis_and_api_die_after_task --name N [--simple]``: the worker of
``backend/worker.py``, but where its first task returns (in the work-horse of a forking worker, in
the worker itself for a simple one) it creates ``API_DOWN_MARK`` (the test's API answers reports
503 while that file exists) and then saves Redis to disk and shuts it down.
"""

from __future__ import annotations

import os
import sys

from backend.runner import worker as runtime

MARK = os.environ["REDIS_DIES_MARK"]
API_DOWN = os.environ["API_DOWN_MARK"]


def _wrap(cls):
    ended = cls.handle_execution_ended

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        if not os.path.exists(MARK):
            open(MARK, "w").close()  # noqa: SIM115
            open(API_DOWN, "w").close()  # noqa: SIM115
            self.connection.shutdown(save=True)
        ended(self, job, queue, heartbeat_ttl)

    cls.handle_execution_ended = handle_execution_ended


_wrap(runtime.JobServiceWorker)
_wrap(runtime.JobServiceSimpleWorker)

if __name__ == "__main__":
    sys.exit(runtime.main(sys.argv[1:]))
