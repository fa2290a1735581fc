"""A run's outcome as the worker holds it, apart from RQ's bookkeeping of it in Redis.

RQ records a run's end in Redis right after its task returns or raises. When Redis goes away
just then, RQ's ``perform_job`` raises a Redis error and the outcome reaches no one through RQ;
a simple worker (the task ran in its own process) still holds it, so it reports that outcome
(COMPLETED, or the task's own failure) rather than an interruption, which would run a finished
task again or re-run a failure without spending a retry.
"""

from __future__ import annotations

import traceback

from rq.job import Job as RQJob

from backend.runner.recent import RecentSet

#: A forking worker's work-horse exits with one of these statuses when RQ's bookkeeping failed
#: after its task and it reported the run's outcome to the API itself (a completion, or another
#: end): its parent, which reads a run's end from Redis, then reports nothing (an interruption
#: would run a finished task again).
HORSE_REPORTED_COMPLETED, HORSE_REPORTED_OTHER = 3, 4
#: How long such a work-horse waits for the API's answer before it leaves the run to its parent.
HORSE_REPORT_SECONDS = 5.0


#: RQ ids of runs that completed, reported to the API by this process, whose end RQ never
#: recorded (Redis went away first). When Redis answers again the worker records them finished
#: in RQ (``startup.abandon_orphaned_jobs``) rather than failed as an earlier loop's orphans.
completed_unrecorded = RecentSet()


def lost_redis(exc: Exception) -> str:
    """The error of a run whose outcome Redis lost (RQ's bookkeeping failed mid-job).

    An interruption, not the task's failure (``backend.core.interruptions``): reported with the
    worker's ``interrupted`` mark, the API queues the job again at once, spending no retry.
    """
    return f"WorkerLostRedis: {type(exc).__name__}: {exc}"


class HeldOutcome:
    """Wraps ``job.perform`` (RQ's one call of the task) to keep what the task returned or raised."""

    def __init__(self, job: RQJob):
        self.ended = False
        self.result: object = None
        self.error: str | None = None
        #: What the task raised (a ``Snooze`` is no failure), or None.
        self.exception: BaseException | None = None
        perform = job.perform

        def run():
            try:
                self.result = perform()
            except BaseException as exc:
                # The task raised, or RQ's timeout fired in it: the task's own failure.
                self.exception = exc
                self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                raise
            finally:
                self.ended = True
            return self.result

        job.perform = run
