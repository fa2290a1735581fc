"""The queue adapter: enqueues, inspects, fences and stops the RQ jobs behind the store's jobs.

With the rest of ``backend/broker`` it is the only code of ours that talks to Redis and RQ
on the API's side (rq-dashboard's own views, mounted at /rq, are the library's):
``registries.py`` (counts, listings, workers, tidying), ``inspection.py`` (the /rq
dashboard's reads and actions), ``leases.py`` (worker leases, the reconciler's lock),
``connection.py`` (opens the connection: raw bytes, never ``decode_responses``) and
``errors.py`` (Redis' and RQ's errors under the names the layers above catch).

A rule from production incidents lives here: a task's arguments always go to RQ as
``args=``/``kwargs=``, so that parameters named ``job_id``, ``timeout``, ``ttl``,
``description``, ``meta`` or ``retry`` reach the task instead of being taken by RQ as its own
options.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.rate_limit import RateLimit
from rq.serializers import JSONSerializer

from backend.broker import fair_queue, key_limits, registries, rq_hashes
from backend.broker.waiting_facts import task_limit_key
from backend.core.settings import QUEUE_NAMES

log = logging.getLogger(__name__)


def register_queues(connection: Redis, names=QUEUE_NAMES) -> None:
    """Make the queues known to RQ (``rq info``, RQ Dashboard) before their first job."""
    connection.sadd(Queue.redis_queues_keys, *(f"{Queue.redis_queue_namespace_prefix}{name}" for name in names))


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ job id of one attempt of a job: a new attempt is a new RQ job."""
    return f"{job_id}-{attempt}"


#: How long a fence outlives its attempt's cancellation or replacement.
FENCE_SECONDS = 7 * 24 * 3600


def fence_key(rq_id: str) -> str:
    """Present while no worker may start this RQ job (its attempt was cancelled or replaced)."""
    return f"jobservice:fenced:{rq_id}"


class RedisUnavailable(RedisConnectionError):
    """Raised without a network call while a recent failure says Redis is down."""


class QueueAdapter:
    """Enqueue, inspect and stop the RQ jobs behind the store's jobs."""

    #: After a connection failure, calls fail fast for this long instead of each waiting
    #: for a connect timeout, so submissions are recorded PENDING at full speed meanwhile.
    DOWN_BACKOFF_SECONDS = 2.0

    #: Outcomes must outlive the moment they are read back from RQ: by the forking worker's
    #: parent as soon as its work-horse exits, and by the reconciler when a report was lost.
    MIN_TTL_SECONDS = 60

    def __init__(self, connection: Redis, *, result_ttl: int, failure_ttl: int, fair_share: bool = True):
        for name, value in (("RQ_RESULT_TTL", result_ttl), ("RQ_FAILURE_TTL", failure_ttl)):
            if value < self.MIN_TTL_SECONDS:
                raise ValueError(f"{name} must be at least {self.MIN_TTL_SECONDS} seconds, got {value}")
        self.connection = connection
        #: Index each job RQ pushes at once for the workers' fair pop (backend/broker/fair_queue.py).
        self.fair_share = fair_share
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.queues = {name: Queue(name, connection=connection, serializer=JSONSerializer) for name in QUEUE_NAMES}
        self._hashes = rq_hashes.Templates(result_ttl=result_ttl, failure_ttl=failure_ttl)
        self._down_until = 0.0
        self._answered_at = float("-inf")

    #: Redis counts as up for this long after it last answered (see ``recently_up``).
    UP_FOR_SECONDS = 1.0

    @property
    def recently_up(self) -> bool:
        """Whether Redis answered this process within the last ``UP_FOR_SECONDS``."""
        return time.monotonic() - self._answered_at < self.UP_FOR_SECONDS

    @contextlib.contextmanager
    def _guard(self):
        if time.monotonic() < self._down_until:
            raise RedisUnavailable("Redis was unreachable moments ago")
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError):
            # READONLY: a master that a failover demoted (redis:// URLs see it as it is; Sentinel's
            # connections turn it into a ConnectionError): down until the new master is found.
            self._down_until = time.monotonic() + self.DOWN_BACKOFF_SECONDS
            # No longer "recently up": submissions meanwhile are recorded PENDING (the reconciler
            # enqueues them), not QUEUED with no queue entry to wait for a new attempt.
            self._answered_at = float("-inf")
            raise
        self._answered_at = time.monotonic()

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
        at: datetime | None = None,
        depends_on: list[str] | None = None,
        concurrency: tuple[str, int] | None = None,
        owner: str | None = None,
        rate: tuple[str, str] | None = None,
        fresh: bool = False,
    ) -> str:
        """Put one attempt of a job on the queue of its priority (at ``at``, through RQ's
        scheduler, when given); return its RQ job id. Enqueueing an attempt twice is a no-op.

        ``owner``: who submitted it, for fair share; ``rate``: (key, limit text) of a task with a
        rate limit, read by the worker after its pop (backend/broker/key_limits.py); ``fresh``:
        the caller recorded this attempt a moment ago and nothing else enqueues it (a new job's
        first attempt, recorded QUEUED: the reconciler makes a new attempt of such a job, never
        this one), so the look for its hash is skipped: one round trip, the writes' MULTI."""
        rq_id = rq_job_id(job_id, attempt)
        queue = self.queues[priority]
        options = self._options(rq_id, job_id, attempt, func_path, args, kwargs, timeout, rate)
        if depends_on:
            # RQ holds the job in its deferred registry until these RQ jobs finish.
            options["depends_on"] = list(depends_on)
        if concurrency:
            # RQ's concurrency limit, shared by every job of the task across all workers.
            options["rate_limit"] = RateLimit(key=task_limit_key(concurrency[0]), concurrency=concurrency[1])
        owner = owner if self.fair_share else None
        if at is not None and at.microsecond:
            # RQ scores a scheduled job by whole seconds rounded down: rounded up here, a job
            # (a snooze's next attempt, say) is never due before its time.
            at = at.replace(microsecond=0) + timedelta(seconds=1)
        if fresh:
            with self._guard():
                # Not watching: the writes are sent as one MULTI ... EXEC (a job with parents still
                # has RQ watch them first, as below).
                if (
                    at is None
                    and not depends_on
                    and not concurrency
                    and self._push_new(queue, rq_id, func_path, options, owner=owner)
                ):
                    return rq_id
                with self.connection.pipeline() as pipe:
                    self._put(pipe, queue, func_path, options, at=at, owner=owner, front=self.fair_share)
                    pipe.execute()
            return rq_id
        key = RQJob.key_for(rq_id)
        # Atomic across hosts: the check and the enqueue are one MULTI under WATCH of the
        # attempt's hash, so when two hosts enqueue it at once, the second EXEC fails and its
        # second look finds the hash (without it, both passed the check and pushed it twice).
        with self._guard(), self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        return rq_id
                    self._put(
                        pipe,
                        queue,
                        func_path,
                        options,
                        at=at,
                        owner=owner,
                        front=self.fair_share,
                    )
                    pipe.execute()
                    return rq_id
                except WatchError:
                    continue  # another host enqueued it, or a parent RQ job moved: look again

    def _options(self, rq_id: str, job_id: str, attempt: int, func_path: str, args, kwargs, timeout: int, rate) -> dict:
        """RQ's options for one attempt (``args=``/``kwargs=``: a task's own ``job_id`` reaches it)."""
        return {
            "args": list(args),
            "kwargs": dict(kwargs),
            "timeout": timeout,
            "result_ttl": self.result_ttl,
            "failure_ttl": self.failure_ttl,
            "job_id": rq_id,
            "meta": {
                "job_id": job_id,
                "attempt": attempt,
                **({"rate": {"key": rate[0], "limit": rate[1]}} if rate else {}),
            },
            "description": f"{func_path} ({job_id} attempt {attempt})",
        }

    def enqueue_many(self, attempts: list[dict]) -> None:
        """``enqueue`` for many attempts pushed at once (no time, no parents, no concurrency
        limit: ``enqueue``'s keywords without those), in three round trips whatever their number:
        WATCH of their hashes, one look for any of them, one MULTI with every push (the hash
        copied from RQ's template, as ``_push_new`` writes it). Should any hash exist already or
        change meanwhile (another host's reconciler enqueued one), or RQ's hash differ from the
        template, each goes through ``enqueue`` instead, which skips those already there."""
        writes = rq_hashes.Writes()
        keys = []
        try:
            for attempt in attempts:
                rq_id = rq_job_id(attempt["job_id"], attempt["attempt"])
                queue = self.queues[attempt["priority"]]
                options = self._options(
                    rq_id, attempt["job_id"], attempt["attempt"], attempt["func_path"], attempt["args"],
                    attempt["kwargs"], attempt["timeout"], attempt.get("rate"),
                )  # fmt: skip
                owner = attempt.get("owner") if self.fair_share else None
                self._push_writes(writes, queue, rq_id, attempt["func_path"], options, owner=owner)
                keys.append(RQJob.key_for(rq_id))
        except LookupError:
            keys = []  # an RQ whose hash differs from the template: RQ's own path for each
        if keys:
            queue_keys = sorted({self.queues[attempt["priority"]].key for attempt in attempts})
            with self._guard(), self.connection.pipeline() as pipe:
                try:
                    pipe.watch(*keys)
                    if not pipe.exists(*keys):
                        pipe.multi()
                        pipe.sadd(Queue.redis_queues_keys, *queue_keys)
                        for command in writes.commands:
                            pipe.execute_command(*command)
                        pipe.execute()
                        return
                except WatchError:
                    pass  # one of them changed: each on its own below
        for attempt in attempts:
            self.enqueue(**attempt)

    def _push_new(self, queue: Queue, rq_id: str, func_path: str, options: dict, *, owner: str | None) -> bool:
        """Send the writes of ``queue.enqueue_job`` for a new RQ job pushed at once (no time, no
        parents, no concurrency limit) as one MULTI: its hash copied from RQ's template for the
        queue, the push to the tail, and its fair-share index (``rq_hashes``). False, with nothing
        sent, for an RQ whose hash differs from the template's (the caller takes RQ's own path)."""
        writes = rq_hashes.Writes()
        writes.sadd(Queue.redis_queues_keys, queue.key)
        try:
            self._push_writes(writes, queue, rq_id, func_path, options, owner=owner)
        except LookupError:
            return False
        rq_hashes.transaction(self.connection, writes)
        return True

    def _push_writes(
        self, writes: rq_hashes.Writes, queue: Queue, rq_id: str, func_path: str, options: dict, *, owner: str | None
    ) -> None:
        """Record on ``writes`` a new RQ job pushed at once: its hash copied from RQ's template, the
        push to the tail, its fair-share index.

        Raises:
            LookupError: RQ's hash differs from the template's (nothing recorded).
        """
        mapping = self._hashes.mapping(queue, func_path, options)
        writes.hset(RQJob.key_for(rq_id), mapping=mapping)
        writes.rpush(queue.key, rq_id)
        if owner is not None:
            fair_queue.index_writes(writes, queue.name, rq_id, owner)

    @staticmethod
    def _put(
        pipe: Pipeline,
        queue: Queue,
        func_path: str,
        options: dict,
        *,
        at: datetime | None,
        owner: str | None = None,
        front: bool = True,
    ) -> None:
        """Queue the writes that enqueue one RQ job on ``pipe`` (watching; MULTI once this returns)."""
        # Under fair share (``front``), a job RQ pushes later (its scheduler at ``at``, its parents'
        # end, a concurrency slot) goes to the FRONT then (the flag is saved on its hash): the pop
        # serves that unindexed run as one more owner, "due" (fair_queue), instead of after the
        # whole backlog. Without fair share RQ's order is kept: the tail, first come first served.
        flag = True if front else None
        if at is not None:
            pipe.multi()
            job = queue.create_job(func_path, status=RQStatus.SCHEDULED, **options)
            job.enqueue_at_front = flag
            queue.schedule_job(job, at, pipeline=pipe)
        elif "rate_limit" not in options:
            job = queue.create_job(func_path, status=RQStatus.QUEUED, **options)
            job.enqueue_at_front = flag if "depends_on" in options else None
            # RQ watches the parents (depends_on) on the same pipeline, then opens MULTI.
            job = queue.enqueue_job(job, pipeline=pipe)
            if job.enqueue_at_front and job.get_status(refresh=False) == RQStatus.QUEUED:
                pipe.hdel(job.key, "enqueue_at_front")  # its parents had ended: pushed now, to the tail
            if owner is not None and job.get_status(refresh=False) == RQStatus.QUEUED:
                # Pushed now (not deferred): indexed in the same MULTI, so the list and the index agree.
                fair_queue.index_writes(pipe, queue.name, job.id, owner)
        else:
            # RQ's enqueue_job refuses a pipeline for a rate-limited job (a caller's later save on
            # it would undo the promotion; we save nothing after), so its steps are taken here:
            # the parents, then RQ's own rate-limited enqueue, whose promotion script joins the MULTI.
            job = queue.create_job(func_path, status=RQStatus.QUEUED, **options)
            job.origin = queue.name
            job.enqueue_at_front = flag  # RQ's promotion script LPUSHes it (if set) when a slot frees
            job = queue.setup_dependencies(job, pipeline=pipe)
            pipe.sadd(queue.redis_queues_keys, queue.key)
            if job.get_status(refresh=False) != RQStatus.DEFERRED:
                queue._enqueue_rate_limited_job(job, pipeline=pipe)

    def discard_deferred(self, rq_id: str) -> bool:
        """Delete an RQ job that waits in the deferred registry; True if there was one.

        The store settles dependencies itself when a parent needed retries (its RQ job
        changed), so the deferred copy is replaced by a fresh, ready one. Atomic across hosts
        like ``enqueue``: the status read and the delete are one MULTI under WATCH of the hash,
        so of hosts releasing one job at once only one finds it deferred (before, each deleted
        whatever copy the previous one had just put back).
        """
        key = RQJob.key_for(rq_id)
        with self._guard(), self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    job = self._fetch_or_none(rq_id)
                    if job is None or job.get_status(refresh=False) != RQStatus.DEFERRED:
                        return False
                    queue = self.queues.get(job.origin)
                    pipe.multi()
                    if queue is not None:
                        queue.deferred_job_registry.remove(job, pipeline=pipe)
                    job.delete(pipeline=pipe)
                    pipe.execute()
                    return True
                except WatchError:
                    continue  # another host changed it meanwhile: look again
                except InvalidJobOperation:
                    # RQ read the status outside the MULTI and found the hash gone: another
                    # host deleted it after our look. Look again (it finds nothing to discard).
                    pipe.reset()
                    continue

    def fetch_many(self, rq_ids: list[str]) -> dict[str, RQJob | None]:
        """The RQ jobs of ``rq_ids`` in one round trip; None where the hash is gone or unreadable."""
        with self._guard():
            try:
                jobs = RQJob.fetch_many(rq_ids, connection=self.connection, serializer=JSONSerializer)
            except RedisError:
                raise
            except Exception:  # one corrupt hash: read them one by one, None for the unreadable
                jobs = [self._fetch_or_none(rq_id) for rq_id in rq_ids]
        return dict(zip(rq_ids, jobs, strict=True))

    def _fetch_or_none(self, rq_id: str) -> RQJob | None:
        try:
            return RQJob.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
        except RedisError:
            raise
        except Exception:
            return None

    def existing(self, rq_ids: list[str]) -> set[str]:
        """The ids among ``rq_ids`` whose RQ job hash exists (one pipelined EXISTS each)."""
        return self._present(rq_ids, RQJob.key_for)

    def _present(self, rq_ids: list[str], key_of) -> set[str]:
        """The ids among ``rq_ids`` whose key (``key_of(rq_id)``) exists, in one round trip."""
        if not rq_ids:
            return set()
        with self._guard(), self.connection.pipeline(transaction=False) as pipe:
            for rq_id in rq_ids:
                pipe.exists(key_of(rq_id))
            found = pipe.execute()
        return {rq_id for rq_id, present in zip(rq_ids, found, strict=True) if present}

    def queued_ids(self) -> set[str]:
        """Every RQ job id waiting in the three queue lists."""
        with self._guard(), self.connection.pipeline(transaction=False) as pipe:
            held = key_limits.held_ids(self.connection)  # first: a release moves a job from held to a list
            for queue in self.queues.values():
                pipe.lrange(queue.key, 0, -1)
            lists = pipe.execute()
        return {rq_id.decode() for ids in lists for rq_id in ids} | held

    def fetch(self, rq_id: str) -> RQJob | None:
        """The RQ job ``rq_id``; None when there is none, or the id is none RQ could hold
        (RQ raises ValueError for characters other than letters, digits, _ and -)."""
        try:
            with self._guard():
                return RQJob.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
        except (NoSuchJobError, ValueError):
            return None

    def fence(self, rq_id: str) -> None:
        """Forbid every worker to start this RQ job from now on.

        A worker checks the fence after RQ marks the job started and before it runs the
        task; ``cancel`` reads RQ's status after fencing. So a worker that passed the fence
        is seen as started (and is sent the stop-job command), and one that had not is stopped
        by the fence.
        """
        with self._guard():
            self.connection.set(fence_key(rq_id), 1, ex=FENCE_SECONDS)

    def fence_many(self, rq_ids: list[str]) -> None:
        """``fence`` for many RQ jobs, in one round trip: all of them or (Redis refusing) none."""
        if not rq_ids:
            return
        with self._guard(), self.connection.pipeline() as pipe:
            for rq_id in rq_ids:
                pipe.set(fence_key(rq_id), 1, ex=FENCE_SECONDS)
            pipe.execute()

    def fenced(self, rq_ids: list[str]) -> set[str]:
        """Those of ``rq_ids`` whose attempt is fenced (one round trip)."""
        return self._present(rq_ids, fence_key)

    def cancel(self, rq_id: str) -> None:
        """Take a job off its queue, or stop it if a worker runs it. Unknown ids are ignored.

        Called once the attempt is fenced (``fence``), so this is tidying, not the guarantee:
        RQ's own errors here are logged, never raised. A worker may take the job between the
        status read and RQ's walk of its registries; RQ then reads execution records that the
        worker has not written yet (or has removed) and raises ``ValueError``. That worker
        meets the fence and does not run the job; the stop-job command is sent even so.

        Raises:
            RedisError: Redis is unreachable or refused a command (the caller logs it).
        """
        self.cancel_fetched(rq_id, self.fetch(rq_id))

    def cancel_fetched(self, rq_id: str, job: RQJob | None) -> None:
        """``cancel`` of an RQ job read a moment ago (``fetch_many``): its status as read then."""
        if job is None:
            return
        try:
            if job.get_status(refresh=False) == "started":
                self._stop(rq_id)
                return
            job.cancel()
        except (InvalidJobOperation, NoSuchJobError, ValueError) as exc:
            log.warning(
                "RQ job %s: not taken off its queue (%s: %s); its fence stops it", rq_id, type(exc).__name__, exc
            )
            self._stop(rq_id)
        # Its fair entries too (the index field, its owner's FIFO entry): else they stay until a
        # pop of that queue meets them, and a queue no worker pops would keep them.
        if job.origin:
            fair_queue.forget(self.connection, job.origin, rq_id)

    def _stop(self, rq_id: str) -> None:
        """Send RQ's stop-job command; a job that no worker runs (any more) needs none."""
        with contextlib.suppress(InvalidJobOperation, NoSuchJobError, ValueError):
            send_stop_job_command(self.connection, rq_id, serializer=JSONSerializer)

    def abandon(self, rq_job: RQJob, reason: str) -> None:
        """Mark an RQ job whose worker died as failed, and take it out of its started registry."""
        with self._guard():
            key, entries = registries.started_entries(self.connection, rq_job.origin)
            mine = [entry for entry, rq_id in entries if rq_id == rq_job.id]
            registries.fail_started(self.connection, key, mine, rq_job, reason)

    def ping(self) -> bool:
        try:
            return bool(self.connection.ping())
        except RedisError:
            return False
