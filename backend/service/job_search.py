"""The bulk actions by filter: ``POST /jobs/cancel`` and ``POST /jobs/retry`` with the search
filters of ``GET /jobs``; the jobs they act on, and the retry of many (the cancel of many is
``Cancels.cancel_many``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.core.job_filters import JobFilter
from backend.core.states import LIVE_VALUES, JobStatus
from backend.service.bulk import act_on_each
from backend.store import job_search

if TYPE_CHECKING:  # types only
    from backend.service.job_manager import JobManager

#: What each bulk action acts on (a retry by hand takes FAILED and CANCELLED jobs only).
CANCELLABLE = tuple(LIVE_VALUES)
RETRYABLE = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def matching_ids(
    manager: JobManager, filt: JobFilter, *, statuses: tuple[str, ...], cap: int, max_attempts: int | None = None
) -> tuple[list[str], bool]:
    """The ids of at most ``cap`` jobs matching ``filt`` with one of ``statuses`` (and, given
    ``max_attempts``, fewer attempts: those a retry can act on), oldest first, and whether more are left."""
    ids = job_search.matching_ids(manager.sessions, filt, statuses=statuses, limit=cap + 1, max_attempts=max_attempts)
    return ids[:cap], len(ids) > cap


def retry_many(
    manager: JobManager, job_ids: list[str], *, owner: str | None, max_attempts: int
) -> tuple[list[str], list[dict]]:
    """Retry each of ``job_ids`` as ``POST /jobs/<id>/retry`` does; the ids retried and, for the
    others, why not. One job's failure never stops the rest; a store that is down stops all
    (503: the jobs retried so far stay so, and are skipped as live when the request is sent again)."""
    return act_on_each(
        job_ids, lambda job_id: manager.retry_job(job_id, owner=owner, max_attempts=max_attempts), verb="retry"
    )
