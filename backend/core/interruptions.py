"""Interruptions: a run cut by the infrastructure, told apart from a task's own failure.

A worker killed under its job, a worker that lost Redis mid-run, an outcome Redis lost: none
is the task's fault, so such a run is put back on its queue at once, without backoff and
without spending one of ``max_retries`` (as BullMQ's stalled jobs and Sidekiq's super_fetch).
They are counted apart (``interruptions``), and a job that keeps taking its workers down (a
poison pill) ends FAILED once it has been interrupted more than ``max_interruptions`` times.

The worker and the reconciler mark such a run by the first word of its error, so that a
report from a worker of an older version (the same words) is understood too, and the wire
protocol needs no new field. A timeout is the task's failure (RQ's ``JobTimeoutException``),
and so is a work-horse killed under its job (the OOM killer): the worker itself lived on.
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
#: RQ's own word for a started job whose worker stopped heartbeating (its registry cleanup).
_RQ_ABANDONED = "due to AbandonedJobError"

#: ``max_interruptions`` when a submission does not say, and the most it may say.
DEFAULT_MAX_INTERRUPTIONS = 3
MAX_INTERRUPTIONS = 100

#: The outcome recorded on an attempt that was interrupted (next to COMPLETED, FAILED, ...).
OUTCOME = "INTERRUPTED"
#: The first word of the error of a job ended for its interruptions.
ERROR_PREFIX = "Interrupted"


def is_interruption(error: str | None) -> bool:
    """Whether a run that ended with ``error`` was cut by the infrastructure, not by its task."""
    return bool(error) and (error.startswith(PREFIXES) or _RQ_ABANDONED in error)


def too_many(count: int, limit: int, last: str) -> str:
    """The error of a job ended because its run was interrupted ``count`` times, over ``limit``."""
    times = "time" if count == 1 else "times"
    return f"{ERROR_PREFIX}: the job's run was interrupted {count} {times} (max_interruptions {limit}); last: {last}"
