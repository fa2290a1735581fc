"""Interruptions: a run cut by the infrastructure, told apart from a task's own failure.

A worker killed under its job, a worker that lost Redis mid-run, an outcome Redis lost: none
is the task's fault, so such a run is put back on its queue at once, without backoff and
without spending one of ``max_retries`` (as BullMQ's stalled jobs and Sidekiq's super_fetch).
They are counted apart (``interruptions``), and a job that keeps taking its workers down (a
poison pill) ends FAILED once it has been interrupted more than ``max_interruptions`` times.

Who wrote an error decides, never its text (a task controls its own exception's message): the
worker marks a report of its own infrastructure failure with ``"interrupted": true``
(``backend.core.protocol``), which no task's failure sets; the reconciler takes RQ's stored
failure for an interruption only when the whole of it is a line the worker or the reconciler
wrote for one, or RQ's own abandoned-job words (``recorded_interruption``). A timeout is the
task's failure (RQ's ``JobTimeoutException``), and so is a work-horse killed under its job (the
OOM killer): the worker itself lived on. A start the store never confirmed is neither: its task
never ran (``START_UNCONFIRMED``, ``recorded_unstarted``).
"""

from __future__ import annotations

#: The worker's process died under the job (its lease lapsed, or a restarted worker of the
#: same name found the job started under its name).
WORKER_DIED = "WorkerDied"
#: The worker lost Redis while the job ran: RQ's bookkeeping of the run failed.
WORKER_LOST_REDIS = "WorkerLostRedis"
#: Redis lost the run's outcome (a failover or an empty restart) or its RQ job's hash.
JOB_LOST = "JobLost"
PREFIXES = tuple(f"{name}:" for name in (WORKER_DIED, WORKER_LOST_REDIS, JOB_LOST))
#: The store did not confirm, in time, a start Redis could not vouch for (``backend/runner/start_gate.py``).
#: Not an interruption: the task never ran, so no run was cut. The worker marks its report
#: ``"unstarted": true``; the job gets a new attempt after a short delay (so it cannot spin),
#: spending neither a retry nor an interruption (``Attempts.requeue_unstarted``).
START_UNCONFIRMED = "StartUnconfirmed"
#: The outcome recorded on an attempt whose start the store never confirmed (its task never ran).
UNSTARTED_OUTCOME = "UNSTARTED"
#: How RQ's registry cleanup records a started job whose worker stopped heartbeating
#: (rq/registry.py: "Moved to FailedJobRegistry, due to AbandonedJobError, at <time>").
RQ_ABANDONED = "Moved to FailedJobRegistry, due to AbandonedJobError"

#: ``max_interruptions`` when a submission does not say, and the most it may say.
DEFAULT_MAX_INTERRUPTIONS = 3
MAX_INTERRUPTIONS = 100

#: The outcome recorded on an attempt that was interrupted (next to COMPLETED, FAILED, ...).
OUTCOME = "INTERRUPTED"
#: The first word of the error of a job ended for its interruptions.
ERROR_PREFIX = "Interrupted"


def recorded_interruption(exc_string: str | None) -> bool:
    """Whether RQ's stored failure of a run (its WHOLE ``exc_string``) records an interruption.

    The worker and the reconciler record a worker that died as one line of their own
    (``"WorkerDied: ..."``), RQ its abandoned jobs in its own words; a task's failure is stored as
    a traceback (``"Traceback (most recent call last): ..."``), so no message a task raises, on
    any of its lines, can pass for either.
    """
    text = (exc_string or "").strip()
    return text.startswith(RQ_ABANDONED) or (text.startswith(PREFIXES) and "\n" not in text)


def recorded_unstarted(exc_string: str | None) -> bool:
    """Whether RQ's stored failure of a run (its WHOLE ``exc_string``) is the worker's own line for
    a start the store never confirmed: one line, which no task's traceback can be."""
    text = (exc_string or "").strip()
    return text.startswith(f"{START_UNCONFIRMED}:") and "\n" not in text


def too_many(count: int, limit: int, last: str) -> str:
    """The error of a job ended because its run was interrupted ``count`` times, over ``limit``."""
    times = "time" if count == 1 else "times"
    return f"{ERROR_PREFIX}: the job's run was interrupted {count} {times} (max_interruptions {limit}); last: {last}"
