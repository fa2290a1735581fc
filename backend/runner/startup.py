"""What a worker process does before RQ's work loop: wait for Redis, and clear what an earlier
process of the same name left behind (its registration, the jobs it had started)."""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from backend.broker import registries
from backend.broker.errors import NoSuchJob
from backend.runner.outcomes import UnrecordedEnds

log = logging.getLogger(__name__)


def wait_for_redis(connection: Redis, *, what: str) -> None:
    """Block until Redis answers, backing off up to 10 s between tries."""
    delay = 0.5
    while True:
        try:
            connection.ping()
            return
        except RedisError as exc:
            log.warning("%s: Redis unreachable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def forget_stale_registration(connection: Redis, name: str) -> None:
    """Remove RQ's record of an earlier process of this name that died without saying so.

    Only called while holding the name's lease, so that process is surely gone; without
    this, RQ refuses to start a worker under the name for up to ~8 minutes.
    """
    key = f"{Worker.redis_worker_namespace_prefix}{name}"
    if connection.exists(key) and not connection.hexists(key, "death"):
        log.warning("worker %s: clearing the registration of a dead process of the same name", name)
        connection.delete(key)
        connection.srem(Worker.redis_workers_keys, key)


def abandon_orphaned_jobs(
    connection: Redis, name: str, queues: list[str], completed: UnrecordedEnds | None = None
) -> list[str]:
    """Fail, in RQ, every job that RQ shows started under this worker's name.

    Called before this process starts (or restarts) RQ's work loop, when it runs nothing:
    such jobs belonged to an earlier process of the same name that died (a restarted
    container reuses its name), or to a loop that Redis broke mid-job. Their name's lease is
    alive again, so the reconciler would never call them dead; failed in RQ, it settles them
    (a retry, or FAILED) at its next pass. The RQ ids in ``completed`` are runs this process
    saw complete and reported (``outcomes.completed_unrecorded``): RQ records them finished
    with their result, as its worker would have, so that RQ agrees with the store.
    """
    abandoned = []
    for queue_name in queues:
        registry_key, entries = registries.started_entries(connection, queue_name)
        for entry, rq_id in entries:
            try:
                job = RQJob.fetch(rq_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJob:
                registries.forget_started(connection, registry_key, entry)
                continue
            if job.worker_name != name or job.get_status(refresh=False) != RQStatus.STARTED:
                continue
            if completed is not None and rq_id in completed:
                registries.finish_started(connection, registry_key, [entry], job, completed.pop(rq_id))
                log.warning("worker %s: job %s completed while Redis was away; recorded finished in RQ", name, rq_id)
                continue
            reason = f"WorkerDied: worker {name} stopped while running the job"
            registries.fail_started(connection, registry_key, [entry], job, reason)
            abandoned.append(rq_id)
            log.warning("worker %s: job %s of an earlier process marked failed in RQ", name, rq_id)
    return abandoned
