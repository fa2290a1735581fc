"""The worker's side of paused queues: it dequeues only from the queues that are not paused.

RQ's own loop blocks on every queue of the worker for minutes (``dequeue_timeout``) and knows no
pause. ``PauseAwareDequeue`` replaces that one step: before each dequeue it takes the paused
queues from Redis's set (backend/broker/pauses.py), read at most once a second per worker, and
blocks on the other queues for at most ``BLOCK_SECONDS``, so an idle worker sees a pause (or a
resume) within about three seconds. A running job is never touched: a pause only stops starts.
With every queue paused the worker heartbeats and waits, and a SIGTERM still stops it (RQ's
handler raises ``StopRequested`` out of the wait). A busy worker spends no Redis round trip per
job on this: the set is read again only once the last read is a second old.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DequeueTimeout
from rq.worker import WorkerStatus

from backend.broker import pauses

log = logging.getLogger(__name__)

#: The paused set is read again once the last read is this old (seconds).
REFRESH_SECONDS = 1.0
#: The longest block on the queues' lists (whole seconds: RQ's BLPOP takes an int).
BLOCK_SECONDS = 2


class PausedQueues:
    """The paused queues as this worker last read them, read again at most every ``refresh`` s."""

    def __init__(self, refresh: float = REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.refresh = refresh
        self._clock = clock
        self._names: frozenset[str] = frozenset()
        self._read_at: float | None = None

    def current(self, connection: Redis) -> frozenset[str]:
        """The paused queue names; raises RedisError when a due read fails (kept cache unchanged)."""
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self.refresh:
            self._names = pauses.paused(connection)
            self._read_at = now
        return self._names


class PauseAwareDequeue:
    """Mixed into RQ's Worker: ``dequeue_job_and_maintain_ttl`` that skips paused queues."""

    _paused_queues: PausedQueues | None = None
    _paused_seen: frozenset[str] = frozenset()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """The next job of a queue that is not paused, as RQ's (job, queue), or None when a
        burst found none ready (or ``max_idle_time`` passed). ``timeout`` None: do not block."""
        if self._paused_queues is None:
            self._paused_queues = PausedQueues()
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        connection_wait = 1.0
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                open_queues = self._open_queues()
                if timeout is None:  # burst: whatever is ready now, else done
                    if not open_queues:
                        return None
                    result = self._dequeue(open_queues, None)
                else:
                    block = min(BLOCK_SECONDS, timeout)
                    if max_idle_time is not None:
                        left = max_idle_time - (time.monotonic() - idle_since)
                        if left <= 0:
                            return None
                        block = max(1, min(block, math.ceil(left)))
                    if not open_queues:
                        # Everything paused: wait, heartbeating, until one is resumed.
                        time.sleep(min(REFRESH_SECONDS, block))
                        continue
                    result = self._dequeue(open_queues, block)
                if result is not None:
                    job, queue = result
                    self.reorder_queues(reference_queue=queue)
                    job.redis_server_version = self.get_redis_server_version()
                    self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
                    self.heartbeat()
                return result
            except DequeueTimeout:
                continue
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("worker %s: Redis unreachable (%s); retrying in %.0f s", self.name, exc, connection_wait)
                time.sleep(connection_wait)
                connection_wait = min(connection_wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def _open_queues(self) -> list:
        """The worker's queues, in their order, less the paused ones (logged when that changes)."""
        paused = self._paused_queues.current(self.connection)
        if paused != self._paused_seen:
            mine = [queue.name for queue in self._ordered_queues]
            held = [name for name in mine if name in paused]
            log.info(
                "worker %s: paused queues %s; serving %s",
                self.name,
                ",".join(held) or "none",
                ",".join(name for name in mine if name not in paused) or "none (waiting for a resume)",
            )
            self._paused_seen = paused
        return [queue for queue in self._ordered_queues if queue.name not in paused]

    def _dequeue(self, queues: list, block: int | None):
        return self.queue_class.dequeue_any(
            queues,
            block,
            connection=self.connection,
            job_class=self.job_class,
            serializer=self.serializer,
            death_penalty_class=self.death_penalty_class,
        )
