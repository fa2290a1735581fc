"""Job statuses and the table of moves between them.

Within one attempt a job only moves forward: PENDING -> QUEUED -> PROCESSING -> an end.
A new attempt (an automatic retry, a dead worker's job put back, ``POST /jobs/<id>/retry``)
is the only way back to QUEUED, and it always carries a higher attempt number.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    #: Recorded in the store, not yet on a queue (Redis was down, or the API died mid-submit).
    PENDING = "PENDING"
    #: On an RQ queue (or deferred / scheduled there), waiting for a worker.
    QUEUED = "QUEUED"
    #: A worker has started it.
    PROCESSING = "PROCESSING"
    #: The task returned; ``result`` holds what it returned.
    COMPLETED = "COMPLETED"
    #: The task raised, timed out or its worker died, and no retries are left.
    FAILED = "FAILED"
    #: Cancelled by a client before it ended.
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE = frozenset(JobStatus) - TERMINAL

#: Moves allowed within one attempt. A move to the same status is a no-op, not a move.
FORWARD: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.PROCESSING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: Where a new attempt may start from (it always starts PENDING, with a higher attempt number):
#: an automatic retry of a failed attempt or of a dead worker's job,
AUTO_RETRY_FROM = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING})
#: a job that Redis lost before any worker started it,
REQUEUE_FROM = frozenset({JobStatus.PENDING, JobStatus.QUEUED})
#: and a client's ``POST /jobs/<id>/retry`` of an ended job.
MANUAL_RETRY_FROM = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def is_forward(current: JobStatus, target: JobStatus) -> bool:
    """True when ``target`` is a forward move from ``current`` within one attempt."""
    return target in FORWARD[current]
