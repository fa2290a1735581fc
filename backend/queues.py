"""The queue adapter: the only module that talks to RQ on the API's side.

Two rules from production incidents live here. The Redis connection never decodes
responses (RQ stores binary job data; ``decode_responses=True`` crashes workers with
UnicodeDecodeError). And a task's arguments always go to RQ as ``args=``/``kwargs=``, so
that parameters named ``job_id``, ``timeout``, ``ttl``, ``description``, ``meta`` or
``retry`` reach the task instead of being taken by RQ as its own options.
"""

from __future__ import annotations

import contextlib
from urllib.parse import parse_qs, urlparse

from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.config import QUEUE_NAMES


def connect(url: str, *, socket_timeout: float | None = None) -> Redis:
    """Open a Redis connection for RQ: raw bytes, never ``decode_responses``.

    Raises:
        ValueError: the URL asks for ``decode_responses``.
    """
    query = parse_qs(urlparse(url).query)
    if any(value.lower() in ("1", "true", "yes") for value in query.get("decode_responses", [])):
        raise ValueError(f"RQ needs raw bytes from Redis; remove decode_responses from {url!r}")
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def register_queues(connection: Redis, names=QUEUE_NAMES) -> None:
    """Make the queues known to RQ (``rq info``, RQ Dashboard) before their first job."""
    connection.sadd(Queue.redis_queues_keys, *(f"{Queue.redis_queue_namespace_prefix}{name}" for name in names))


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ job id of one attempt of a job: a new attempt is a new RQ job."""
    return f"{job_id}-{attempt}"


class QueueAdapter:
    """Enqueue, inspect and stop the RQ jobs behind the store's jobs."""

    def __init__(self, connection: Redis, *, result_ttl: int, failure_ttl: int):
        self.connection = connection
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.queues = {name: Queue(name, connection=connection, serializer=JSONSerializer) for name in QUEUE_NAMES}

    def enqueue(
        self,
        *,
        job_id: str,
        attempt: int,
        func_path: str,
        args: list,
        kwargs: dict,
        priority: str,
        timeout: int,
    ) -> str:
        """Put one attempt of a job on the queue of its priority; return its RQ job id."""
        rq_id = rq_job_id(job_id, attempt)
        self.queues[priority].enqueue_call(
            func_path,
            args=list(args),
            kwargs=dict(kwargs),
            timeout=timeout,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
            job_id=rq_id,
            meta={"job_id": job_id, "attempt": attempt},
            description=f"{func_path} ({job_id} attempt {attempt})",
        )
        return rq_id

    def fetch(self, rq_id: str) -> RQJob | None:
        try:
            return RQJob.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def cancel(self, rq_id: str) -> None:
        """Take a job off its queue, or stop it if a worker runs it. Unknown ids are ignored."""
        job = self.fetch(rq_id)
        if job is None:
            return
        if job.get_status() == "started":
            with contextlib.suppress(InvalidJobOperation):
                send_stop_job_command(self.connection, rq_id, serializer=JSONSerializer)
            return
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()

    def ping(self) -> bool:
        return bool(self.connection.ping())
