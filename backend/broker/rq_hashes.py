"""A new RQ job's hash, copied from one that RQ itself built for its queue (issue 17).

Why: RQ's ``Queue.create_job`` and ``Queue.enqueue_job`` were about a tenth of a submission's
Python calls: a ``Job`` object, its ``to_dict`` and an HSET of its status before the HSET of the
whole hash. For the common case, a new attempt pushed at once (no scheduled time, no parents, no
concurrency limit), every field of the hash but the job's own is the same for every job of a
queue. So RQ builds one such hash per queue (``Templates``), and each job's hash is a copy of it
with the job's own fields put in as RQ's ``Job.to_dict`` writes them. ``tests/test_rq_hashes.py``
compares the copy with the hash RQ builds for the same job, on the installed RQ.

Such a job's writes (the hash, the push, fair share's index) go to Redis as one MULTI ... EXEC
(``Writes`` and ``transaction``): redis-py's own command methods build each command, which is
packed and sent on one write, as redis-py's transactional pipeline sends it, without that
pipeline's bookkeeping per command (~a third of the enqueue's CPU, issue 17).
"""

from __future__ import annotations

import threading
import zlib

from redis import Redis
from redis.commands.core import CoreCommands
from redis.exceptions import DataError, ResponseError
from redis.utils import HIREDIS_AVAILABLE
from rq import Queue
from rq.job import JobStatus
from rq.utils import now, utcformat

#: The fields a job's hash has of its own; every other field is the queue's template's.
OWN_FIELDS = frozenset({"created_at", "enqueued_at", "data", "description", "meta", "timeout"})


class Templates:
    """One hash per queue, as RQ builds it for a job just pushed (``Queue.enqueue_job``)."""

    def __init__(self, *, result_ttl: int, failure_ttl: int):
        self.result_ttl, self.failure_ttl = result_ttl, failure_ttl
        self._by_queue: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _template(self, queue: Queue) -> dict:
        template = self._by_queue.get(queue.name)
        if template is None:
            with self._lock:
                template = self._by_queue.get(queue.name)
                if template is None:
                    template = self._by_queue[queue.name] = self._built_by_rq(queue)
        return template

    def _built_by_rq(self, queue: Queue) -> dict:
        # What enqueue_job leaves on a job it pushes (origin, enqueued_at, QUEUED), without Redis.
        job = queue.create_job(
            "builtins.print",
            args=[],
            kwargs={},
            timeout=1,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
            job_id="template",
            meta={"template": True},
            description="template",
            status=JobStatus.QUEUED,
        )
        job.origin = queue.name
        job.enqueued_at = now()
        mapping = job.to_dict()
        missing = OWN_FIELDS - mapping.keys()
        if missing:  # an RQ that writes these differently: the caller uses RQ's own path
            raise LookupError(f"RQ's job hash has no {sorted(missing)}")
        return mapping

    def mapping(self, queue: Queue, func_path: str, options: dict) -> dict:
        """The hash RQ would write for ``queue.create_job(func_path, status=QUEUED, **options)``
        pushed by ``queue.enqueue_job``; ``options`` as ``QueueAdapter.enqueue`` builds them
        (args, kwargs, timeout, meta, description; the TTLs are this instance's)."""
        serializer = queue.serializer
        mapping = dict(self._template(queue))
        # RQ stamps created_at and enqueued_at a few microseconds apart; here they are one instant.
        mapping["created_at"] = mapping["enqueued_at"] = utcformat(now())
        mapping["data"] = zlib.compress(serializer.dumps((func_path, None, options["args"], options["kwargs"])))
        mapping["description"] = options["description"]
        mapping["meta"] = serializer.dumps(options["meta"])
        mapping["timeout"] = options["timeout"]
        return mapping


class Writes(CoreCommands):
    """Stands in for a pipeline: redis-py's command methods (``hset``, ``rpush``, ``zadd``...)
    record their commands here, as they would queue them on a transactional pipeline, for
    ``transaction`` to send."""

    def __init__(self) -> None:
        self.commands: list[tuple] = []

    def execute_command(self, *args, **options) -> None:
        self.commands.append(args)


if HIREDIS_AVAILABLE:
    import hiredis

    def _packed(commands: list[tuple], connection) -> bytes:
        try:
            return b"".join([hiredis.pack_command(command) for command in commands])
        except TypeError as exc:  # as redis-py raises a value it cannot send
            raise DataError(str(exc)) from exc

else:  # redis-py's own packer (its Python one)

    def _packed(commands: list[tuple], connection) -> bytes:
        return b"".join(connection.pack_commands(commands))


def transaction(redis: Redis, writes: Writes) -> list:
    """Send ``writes`` as MULTI ... EXEC on one write and return EXEC's replies, as redis-py's
    transactional pipeline (not watching) does: a connection of the pool, its retry of a dropped
    connection, the first error raised (ReadOnlyError included, which the caller's guard reads).

    Raises:
        RedisError: a connection error after the retries, or the first command Redis refused.
    """
    commands = [("MULTI",), *writes.commands, ("EXEC",)]
    pool = redis.connection_pool
    connection = pool.get_connection()
    try:
        packed = [_packed(commands, connection)]
        return connection.retry.call_with_retry(
            lambda: _exchange(connection, packed, len(commands)), lambda _error: connection.disconnect()
        )
    finally:
        pool.release(connection)


def _exchange(connection, packed: list[bytes], count: int) -> list:
    connection.send_packed_command(packed)
    first_error: ResponseError | None = None
    replies = None
    for _ in range(count):
        # Every reply is read, errors too, so the connection goes back to the pool in step.
        try:
            replies = connection.read_response()
        except ResponseError as exc:  # a command refused as queued (EXEC then answers EXECABORT)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    for reply in replies:
        if isinstance(reply, ResponseError):  # a command that failed as EXEC ran it
            raise reply
    return replies
