"""RQ's queue lists and job registries, read and tidied for recovery, monitoring and metrics.

The queue adapter (``queues.py``) enqueues and stops jobs; this module owns the other reads and
writes of RQ's structures: counting, listing, and removing entries that no worker will settle
any more (the API's cleanup and the worker's start-up tidying share them).
"""

from __future__ import annotations

from typing import Protocol

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Worker
from rq.defaults import DEFAULT_RESULT_TTL
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job_lifecycle import record_job_failure
from rq.rate_limit import release_slot
from rq.serializers import JSONSerializer
from rq.utils import now

#: The registries counted by ``queue_counts``, in the order monitoring shows them.
REGISTRY_KINDS = ("started", "finished", "failed", "deferred", "scheduled")


class QueueSet(Protocol):
    """What this module needs of ``queues.QueueAdapter`` (which imports this module)."""

    connection: Redis
    queues: dict[str, Queue]


def started_rq_id(entry: bytes | str) -> str:
    """The RQ job id of a started-registry entry (``"<rq_id>:<execution id>"``).

    Not RQ's ``StartedJobRegistry.parse_job_id``: it warns on a bare id and raises ValueError on
    an entry with more than one colon, and cleanup must read whatever another client left there.
    """
    text = entry.decode() if isinstance(entry, bytes) else entry
    return text.split(":", 1)[0]


def started_entries(connection: Redis, queue_name: str) -> tuple[str, list[tuple[bytes, str]]]:
    """A queue's started-registry key and its entries, each with its RQ job id."""
    key = Queue(queue_name, connection=connection, serializer=JSONSerializer).started_job_registry.key
    return key, [(entry, started_rq_id(entry)) for entry in connection.zrange(key, 0, -1)]


def fail_started(connection: Redis, registry_key: str, entries: list[bytes], job: RQJob | None, reason: str) -> None:
    """Take entries out of a started registry and, in the same transaction, mark their RQ job
    failed with ``reason`` (or delete its hash when ``job`` is None: nothing could read it)."""
    with connection.pipeline() as pipe:
        for entry in entries:
            pipe.zrem(registry_key, entry)
            if job is None:
                pipe.delete(RQJob.key_for(started_rq_id(entry)))
        if job is not None:
            record_job_failure(job, reason, pipe)
        pipe.execute()


def finish_started(connection: Redis, registry_key: str, entries: list[bytes], job: RQJob, result: object) -> None:
    """Take entries out of a started registry and record their RQ job finished with ``result``, as
    RQ's worker would have (``handle_job_success``: in one transaction, watching the job's
    dependants; then its ready dependants enqueued and its concurrency slot freed). For a run
    whose end Redis lost while the worker reported it to the store."""
    job.ended_at = job.ended_at or now()
    job._result = result
    result_ttl = job.get_result_ttl(DEFAULT_RESULT_TTL)
    queue = Queue(job.origin, connection=connection, serializer=JSONSerializer)
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(job.dependents_key)
                ready = queue.move_dependents_to_ready(job, pipeline=pipe)
                if not pipe.explicit_transaction:
                    pipe.multi()
                for entry in entries:
                    pipe.zrem(registry_key, entry)
                # Its failure bookkeeping may have gone through when Redis answered again.
                pipe.zrem(queue.failed_job_registry.key, job.id)
                job._handle_success(result_ttl, pipeline=pipe, worker_name=job.worker_name or "")
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                pipe.execute()
                break
            except WatchError:
                continue  # a dependant was added meanwhile: read them again
    queue.enqueue_ready_jobs_by_queue(ready)
    release_slot(job)


def record_finished(connection: Redis, job: RQJob, result: object) -> None:
    """``finish_started`` for one RQ job, wherever its started entries are (none: its status alone)."""
    registry_key, entries = started_entries(connection, job.origin)
    finish_started(connection, registry_key, [entry for entry, rq_id in entries if rq_id == job.id], job, result)


def forget_started(connection: Redis, registry_key: str, entry: bytes) -> None:
    """Remove one started-registry entry whose job is gone."""
    connection.zrem(registry_key, entry)


def runnable(job: RQJob | None) -> bool:
    """True when a worker could run this RQ job: its hash exists and its call deserializes."""
    if job is None:
        return False
    try:
        job.func_name  # noqa: B018 - decoding the payload is the check
        return True
    except Exception:
        return False


def queue_ids(connection: Redis, queue: Queue) -> list[str]:
    """Every RQ job id waiting in one queue's list, in order."""
    return [rq_id.decode() for rq_id in connection.lrange(queue.key, 0, -1)]


def drop_queued(connection: Redis, queue: Queue, rq_id: str) -> None:
    """Take a job id out of a queue's list and delete its hash (a worker would crash on it)."""
    connection.lrem(queue.key, 0, rq_id)
    connection.delete(RQJob.key_for(rq_id))


def _registry(queue: Queue, kind: str):
    return getattr(queue, f"{kind}_job_registry")


def queue_counts(adapter: QueueSet, *, registries: bool = False) -> dict[str, dict[str, int]]:
    """Per queue, its length (``"queued"``) and, with ``registries``, each registry's size,
    in one round trip.

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    kinds = REGISTRY_KINDS if registries else ()
    with adapter.connection.pipeline(transaction=False) as pipe:
        for queue in adapter.queues.values():
            pipe.llen(queue.key)
            for kind in kinds:
                pipe.zcard(_registry(queue, kind).key)
        results = iter(pipe.execute())
    return {name: {"queued": next(results), **{kind: next(results) for kind in kinds}} for name in adapter.queues}


def newest_failed_ids(queue: Queue, limit: int) -> list[str]:
    """The ids of a queue's ``limit`` most recently failed RQ jobs, newest first."""
    return queue.failed_job_registry.get_job_ids(0, limit - 1, desc=True)


def requeue(job: RQJob) -> None:
    """Put a failed RQ job back on its queue as it is (a job that is not one of ours)."""
    job.requeue()


def empty_queues(adapter: QueueSet, *, flush_db: bool) -> dict[str, int]:
    """Empty the queues (or flush the whole Redis database); return how many each held."""
    counts = {name: queue.count for name, queue in adapter.queues.items()}
    if flush_db:
        adapter.connection.flushdb()
    else:
        for queue in adapter.queues.values():
            queue.empty()
    return counts


def workers(connection: Redis, *, current_jobs: bool = False) -> list[dict]:
    """Every worker RQ knows of (alive or not: see ``leases`` for which are), as plain rows.

    Each row holds what RQ keeps of the worker: name, pid, queues (names), state,
    birth_date, last_heartbeat, successful_job_count, failed_job_count, total_working_time,
    version, python_version, and current_job_id (None when idle). With ``current_jobs``,
    also ``current_job``: the RQ job it runs (None when idle, or when the job ended and
    expired between the two reads). Every Redis read happens here, so that a caller's
    ``except BrokerError`` around this call covers them all.

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    rows = []
    for worker in Worker.all(connection=connection, serializer=JSONSerializer):
        current_id = worker.get_current_job_id()
        row = {
            "name": worker.name,
            "pid": worker.pid,
            "queues": worker.queue_names(),
            "state": worker.get_state(),
            "birth_date": worker.birth_date,
            "last_heartbeat": worker.last_heartbeat,
            "successful_job_count": worker.successful_job_count,
            "failed_job_count": worker.failed_job_count,
            "total_working_time": worker.total_working_time,
            "version": getattr(worker, "version", ""),
            "python_version": getattr(worker, "python_version", ""),
            "current_job_id": current_id,
        }
        if current_jobs:
            try:
                row["current_job"] = worker.get_current_job()
            except NoSuchJobError:
                row["current_job"] = None
        rows.append(row)
    return rows
