"""A run's outcome as the worker holds it, apart from RQ's bookkeeping of it in Redis.

RQ records a run's end in Redis right after its task returns or raises. When Redis goes away
just then, RQ's ``perform_job`` raises a Redis error and the outcome reaches no one through RQ;
a simple worker (the task ran in its own process) still holds it, so it reports that outcome
(COMPLETED, or the task's own failure) rather than an interruption, which would run a finished
task again or re-run a failure without spending a retry.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import OrderedDict

from redis.exceptions import RedisError
from rq.job import Job as RQJob

from backend.broker import registries
from backend.core import protocol
from backend.core.size_caps import SizeCaps
from backend.tasks import Snooze

log = logging.getLogger(__name__)


class UnrecordedEnds:
    """RQ ids of runs that completed, reported to the API by this process, whose end RQ never
    recorded (Redis went away first), with what they returned. When Redis answers again the
    worker records them finished in RQ with that result (``startup.abandon_orphaned_jobs``),
    rather than failed as an earlier loop's orphans. Bounded: such runs are the few in flight at
    a Redis loss; one forgotten falls back to the orphan's failure."""

    SIZE = 256

    def __init__(self) -> None:
        self._results: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, rq_id: str, result: object) -> None:
        with self._lock:
            self._results.pop(rq_id, None)
            self._results[rq_id] = result
            while len(self._results) > self.SIZE:
                self._results.popitem(last=False)

    def __contains__(self, rq_id: str) -> bool:
        return rq_id in self._results

    def pop(self, rq_id: str) -> object:
        with self._lock:
            return self._results.pop(rq_id, None)


completed_unrecorded = UnrecordedEnds()


def held_end(held: HeldOutcome, job_id: str, attempt: int, exc: Exception, caps: SizeCaps) -> dict:
    """The end report of a run whose end RQ could not record, from the outcome held of it: the
    task's own (COMPLETED, its failure, a snooze), or an interruption when the task never ended."""
    if not held.ended:
        return protocol.failed(job_id, attempt, caps.shorten_error(lost_redis(exc)), interrupted=True)
    if isinstance(held.exception, Snooze):
        return protocol.snoozed(job_id, attempt, held.exception.seconds, caps.shorten_message(held.exception.reason))
    if held.error is not None:
        return protocol.failed(job_id, attempt, caps.shorten_error(held.error))
    # A result the API would refuse fails the attempt with that reason, as ``_report_result`` does.
    problem = caps.result_problem(held.result)
    return protocol.failed(job_id, attempt, problem) if problem else protocol.completed(job_id, attempt, held.result)


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


def record_finished(connection, job: RQJob, result: object) -> None:
    """Record in RQ, now if Redis answers, else once it is back, that a run whose end RQ failed to
    record completed with ``result`` (it was reported to the store): RQ then agrees with the store,
    and RQ's dependants of the job are released as RQ's worker would have."""
    try:
        registries.record_finished(connection, job, result)
    except RedisError as exc:
        log.warning("job %s: completed, but RQ cannot record it yet (%s); recorded once Redis is back", job.id, exc)
        completed_unrecorded.add(job.id, result)
