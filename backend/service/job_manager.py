"""JobManager: the commands on jobs, from a submission to the end of its last attempt.

The class is put together from one part per concern, each in its own module:

- ``submissions`` (submit, create, enqueue a ``job_request.JobRequest``),
- ``batches`` (create a batch, sum it up),
- ``dependencies`` (release or cancel the jobs waiting for one that ended),
- ``cancels`` (one job, or many),
- ``attempts`` (started, progress, completed, failed; retry, requeue, end).

Every change the job commands make to a job's status goes through
``backend.service.transitions.transition``, over the table of ``backend.core.states``; every
statement they run is in ``backend.store.jobs``. (The worker-report batch path writes through
``backend.store.report_writes`` and schedules through ``backend.store.schedules``; the batch
decides its moves with the same ``states.decide``.)

Each write transaction is a unit that ``backend.store.conflicts`` runs again when PostgreSQL
aborts it for a deadlock; calls to Redis are made before or after such a unit, never inside.
"""

from __future__ import annotations

from backend.broker.queues import QueueAdapter
from backend.core.states import JobStatus
from backend.service.attempts import Attempts
from backend.service.batches import Batches
from backend.service.cancels import Cancels
from backend.service.dependencies import Dependencies
from backend.service.job_request import JobRequest
from backend.service.ownership import owned
from backend.service.retries import RetryPolicy
from backend.service.submissions import Submissions, new_job_id
from backend.store.jobs import JobRows, Sessions, get_job_row
from backend.store.models import Attempt, Job

__all__ = ["JobManager", "JobRequest", "new_job_id"]


class JobManager(Submissions, Batches, Dependencies, Cancels, Attempts):
    """Owns the jobs in the store and their way onto RQ's queues."""

    def __init__(
        self, sessions: Sessions, queues: QueueAdapter, *, retry_policy: RetryPolicy, max_attempts: int | None = None
    ):
        self.sessions = sessions
        self.queues = queues
        self.retry_policy = retry_policy
        self.max_attempts = max_attempts

    def get_job(self, job_id: str, *, owner: str | None = None) -> Job:
        """Return a read-only snapshot of a job (its row; the ``Job`` attributes); with
        ``owner``, only that owner's.

        The polling path: one prebuilt Core SELECT on a pooled connection, no ORM session.

        Raises:
            NotFound: no such job, or it belongs to someone else.
        """
        return owned(get_job_row(self.sessions, job_id), owner, "job", job_id)

    def get_attempts(self, job_id: str, *, after: int = 0, limit: int | None = None) -> list[Attempt]:
        """A job's attempts in order, those numbered above ``after``, at most ``limit``."""
        with JobRows.opened(self.sessions) as rows:
            return rows.attempts(job_id, after=after, limit=limit)

    def live_job_ids(
        self,
        *,
        owner: str | None,
        status: JobStatus | None,
        task: str | None,
        batch_id: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Ids of the live jobs matching the filter (for bulk cancel), oldest first, at most ``limit``."""
        with JobRows.opened(self.sessions) as rows:
            return rows.live_ids(owner=owner, status=status, task=task, batch_id=batch_id, limit=limit)
