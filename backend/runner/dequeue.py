"""The worker's dequeue: one atomic pop script per job (fair share, pauses), then RQ's own run.

RQ's loop pops with LPOP/BLPOP (or BLMOVE into an intermediate list when a worker has one queue),
first come, first served, and knows no pause. ``FairDequeue`` replaces that one step with
``FairQueues.pop`` (backend/broker/fair_queue.py): a Lua script that reads the paused set itself
(no pop can race a pause), walks the worker's queues in priority order and takes, in the first
open non-empty one, the next job by fair share. Nothing ready: a BLPOP on the open queues for at
most ``BLOCK_SECONDS`` (``HURRY_AFTER_SECONDS`` first, after which the reports the worker holds go);
a job it takes from a queue paused meanwhile goes back to the FRONT of its list. Nothing ever goes
into RQ's intermediate list (RQ only tidies it for one-queue workers).
A job declaring a rate limit (``meta["rate"]``) is offered to the limiter after its pop; a held
job is not run, and the worker pops again. The limiter's releases run at most every
``RELEASE_EVERY`` seconds, never per job.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import NoSuchJobError
from rq.worker import WorkerStatus

from backend.broker import key_limits
from backend.broker.fair_queue import FairQueues

log = logging.getLogger(__name__)

#: The longest block on the open queues' lists (seconds; a float: Redis 6+ BLPOP takes one).
BLOCK_SECONDS = 1.0
#: Nothing to pop for this long (seconds): the worker is idle, and its held reports go at once.
HURRY_AFTER_SECONDS = 0.05
#: How often the loop releases rate-limited jobs whose slot freed (seconds).
RELEASE_EVERY = 0.5


class FairDequeue:
    """Mixed into RQ's Worker: ``dequeue_job_and_maintain_ttl`` by the pop script."""

    #: Set by ``build_worker`` from FAIR_SHARE and OWNER_WEIGHTS.
    fair_share: bool = True
    owner_weights: dict[str, int] = {}
    _fair: FairQueues | None = None
    _open_seen: tuple[str, ...] | None = None
    _released_at = float("-inf")

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """The next job to run, as RQ's (job, queue), or None when a burst found none ready (or
        ``max_idle_time`` passed). ``timeout`` None: do not block."""
        if self._fair is None:
            self._fair = FairQueues(self.connection, fair=self.fair_share, weights=self.owner_weights)
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        connection_wait = 1.0
        hurried = False
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self._release_due()
                popped = self._fair.pop([queue.name for queue in self._ordered_queues])
                if isinstance(popped, list):  # nothing ready: the open queues
                    self._log_open(popped)
                    reporter = getattr(self, "reporter", None)
                    if timeout is None:
                        if reporter is not None:
                            reporter.hurry()
                        return None
                    block = BLOCK_SECONDS
                    if max_idle_time is not None:
                        left = max_idle_time - (time.monotonic() - idle_since)
                        if left <= 0:
                            return None
                        block = min(block, left)
                    if reporter is not None and not hurried:
                        # Idle: the reports held for company go once no job came for a moment (the
                        # store learns of the last jobs' ends at once, not a linger later); a queue
                        # that runs dry between jobs a few ms apart keeps them for the linger.
                        popped = self._block(popped, min(block, HURRY_AFTER_SECONDS))
                        if popped is None:
                            reporter.hurry()
                            hurried = True
                            continue
                    else:
                        popped = self._block(popped, block)
                    if popped is None:
                        continue
                result = self._start(*popped)
                if result is None:
                    continue  # gone meanwhile, or held by the rate limiter: pop again
                job, queue = result
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()
                self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
                self.heartbeat()
                return result
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("worker %s: Redis unreachable (%s); retrying in %.0f s", self.name, exc, connection_wait)
                time.sleep(connection_wait)
                connection_wait = min(connection_wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def _block(self, open_names: list[str], block: float) -> tuple[str, str] | None:
        """BLPOP on the open queues for ``block`` s; (queue, rq_id) of a job to start, or None."""
        if not open_names:
            time.sleep(block)  # every queue paused: wait (heartbeating) for a resume
            return None
        prefix = self._ordered_queues[0].redis_queue_namespace_prefix
        answer = self.connection.blpop([prefix + name for name in open_names], max(block, 0.01))
        if answer is None:
            return None
        name, rq_id = answer[0].decode().removeprefix(prefix), answer[1].decode()
        return (name, rq_id) if self._fair.after_blocking_pop(name, rq_id) else None

    def _start(self, name: str, rq_id: str):
        """(job, queue) for a popped id; None when its hash is gone or the limiter held it."""
        queue = next(queue for queue in self._ordered_queues if queue.name == name)
        try:
            job = self.job_class.fetch(rq_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            return None  # deleted while it waited (RQ's own dequeue skips these too)
        # Only a job declaring a rate limit costs a round trip here; held: the limiter put it
        # aside atomically (out of every list) and releases it to the front of its queue later.
        if (job.meta or {}).get("rate") and key_limits.admit(self.connection, job) is not None:
            return None
        return job, queue

    def _release_due(self) -> None:
        """Release rate-limited jobs whose slot freed, at most every ``RELEASE_EVERY`` s."""
        if time.monotonic() - self._released_at < RELEASE_EVERY:
            return
        self._released_at = time.monotonic()
        key_limits.release_due(self.connection)

    def _log_open(self, open_names: list[str]) -> None:
        """Log which queues this worker serves when a pause or resume changed that."""
        names = tuple(open_names)
        if names != self._open_seen:
            mine = [queue.name for queue in self._ordered_queues]
            held = [name for name in mine if name not in names]
            log.info(
                "worker %s: paused queues %s; serving %s",
                self.name,
                ",".join(held) or "none",
                ",".join(names) or "none (waiting for a resume)",
            )
            self._open_seen = names
