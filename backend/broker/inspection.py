"""RQ's queues, registries, jobs and workers as the admin dashboard at /rq reads and changes them.

The Flask side (``backend/api/rq_dashboard.py``) checks paths, builds links and pages; what it
asks of Redis is here, read with the JSON serializer that our jobs are written with.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.exceptions import ResponseError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.results import Result
from rq.serializers import JSONSerializer

#: How every job is written and read (rq-dashboard's own views are set to it too).
SERIALIZER = JSONSerializer


def _queue(connection: Redis, queue_name: str) -> Queue:
    return Queue(queue_name, connection=connection, serializer=SERIALIZER)


def fetch(connection: Redis, rq_id: str) -> RQJob:
    """The RQ job ``rq_id``.

    Raises:
        NoSuchJob: its hash is gone.
    """
    return RQJob.fetch(rq_id, connection=connection, serializer=SERIALIZER)


def job_page(
    connection: Redis, queue_name: str, registry_name: str, *, per_page: int, page: int, order: str
) -> tuple[int, list[RQJob]]:
    """How many jobs a queue (``registry_name`` "queued") or registry holds, and page ``page``
    of them: at most ``per_page``, oldest first ("asc") or newest first ("dsc")."""
    queue = _queue(connection, queue_name)
    registry = None if registry_name == "queued" else getattr(queue, f"{registry_name}_job_registry")
    total = queue.count if registry is None else registry.get_job_count(cleanup=False)
    offset = (page - 1) * per_page
    # [start, stop) in RQ's order, oldest first; a dsc page counts from the end.
    start, stop = (max(0, total - offset - per_page), total - offset) if order == "dsc" else (offset, offset + per_page)
    stop = min(stop, total)
    ids: list[str] = []
    if start < stop:
        if registry is None:
            # RQ takes a length here, not an end index.
            ids = queue.get_job_ids(start, stop - start)
        else:
            ids = registry.get_job_ids(start, stop - 1, cleanup=False)
    if order == "dsc":
        ids.reverse()
    # Job.fetch_many, not Queue.fetch_job: the latter removes a gone job's id from the queue.
    return total, [job for job in RQJob.fetch_many(ids, connection, serializer=SERIALIZER) if job]


def requeue_failed(connection: Redis, queue_name: str) -> int:
    """Requeue every failed job of a queue; return how many. An id whose job expired is
    dropped from the registry instead of stopping the rest."""
    registry = _queue(connection, queue_name).failed_job_registry
    count = 0
    for rq_id in registry.get_job_ids(cleanup=False):
        try:
            fetch(connection, rq_id).requeue()
            count += 1
        except NoSuchJobError:
            registry.remove(rq_id)
        except InvalidJobOperation:  # left the registry meanwhile (requeued or deleted by someone)
            pass
    return count


def compact(connection: Redis, queue_name: str) -> None:
    """Drop the ids of jobs that are gone from a queue's list. RQ renames the list first, which
    Redis refuses for a list that does not exist: an empty queue has nothing to compact."""
    try:
        _queue(connection, queue_name).compact()
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise


def status(job: RQJob) -> str:
    """An RQ job's status, read afresh from Redis (the fetched copy may be stale)."""
    return job.get_status()


def result(job: RQJob) -> Any:
    """What an RQ job's latest successful execution returned (None otherwise); read from Redis.

    Raises:
        UndecodableJob: another client wrote it with another serializer.
    """
    return job.return_value()


def meta(job: RQJob) -> dict:
    """An RQ job's ``meta``, read afresh from Redis."""
    return job.get_meta()


def latest_result(job: RQJob) -> Result | None:
    """An RQ job's latest execution result (its ``exc_string`` when it failed), read from Redis."""
    return job.latest_result()
