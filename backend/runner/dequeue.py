"""The worker's dequeue: one atomic pop script per job (fair share, pauses), then RQ's own run.

RQ's loop pops with LPOP/BLPOP (or BLMOVE into an intermediate list when a worker has one queue),
first come, first served, and knows no pause. ``FairDequeue`` replaces that one step with
``FairQueues.take`` (backend/broker/fair_queue.py): a Lua script that reads the paused set itself
(no pop can race a pause), walks the worker's queues in priority order and takes, in the first
open non-empty one, the next job by fair share. Nothing ready: a BLPOP on the open queues for at
most ``BLOCK_SECONDS`` (``HURRY_AFTER_SECONDS`` first, after which the reports the worker holds go);
a job it takes from a queue paused meanwhile goes back to the FRONT of its list. Nothing ever goes
into RQ's intermediate list (RQ only tidies it for one-queue workers).
A job declaring a rate limit (``meta["rate"]``) is offered to the limiter after its pop; a held
job is not run, and the worker pops again. The limiter's releases run at most every
``RELEASE_EVERY`` seconds, never per job.

Round trips (issue 17): the pop (``FairQueues.take``) answers the job's RQ hash, from which RQ's
``Job`` is built (no ``Job.fetch`` after it; the blocking fallback reads it in its one pipeline);
RQ's IDLE state, which it writes after each job and before each pop, is written by the pop only
when nothing is ready (the worker about to block): with a backlog the next job's BUSY followed it
at once. RQ's check for ``rq suspend`` before each job is the pop's too: it pops nothing while the
key exists, and then RQ's own ``check_for_suspension`` runs (it stops a burst worker, waits for
``rq resume`` otherwise).
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import NoSuchJobError
from rq.job import parse_job_id
from rq.worker import WorkerStatus

from backend.broker import key_limits
from backend.broker.fair_queue import SUSPENDED, FairQueues, Taken

log = logging.getLogger(__name__)

#: The longest block on the open queues' lists (seconds; a float: Redis 6+ BLPOP takes one).
BLOCK_SECONDS = 1.0
#: Nothing to pop for this long (seconds): the worker is idle, and its held reports go at once.
HURRY_AFTER_SECONDS = 0.05
#: How often the loop releases rate-limited jobs whose slot freed (seconds).
RELEASE_EVERY = 0.5


class FairDequeue:
    """Mixed into RQ's Worker (before ``LeanBookkeeping``): ``dequeue_job_and_maintain_ttl`` by the
    pop script, with RQ's IDLE state write and suspension check."""

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
        self.set_state(WorkerStatus.IDLE)  # noted here; written by the take that finds nothing
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        connection_wait = 1.0
        hurried = False
        first = True
        while True:
            try:
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self._release_due()
                popped, beat = self._fair.take([queue.name for queue in self._ordered_queues], self)
                first = False
                self.heartbeat_carried(beat)
                if not beat:  # its hash is gone: RQ's own heartbeat, as RQ's loop would send it
                    super().heartbeat()
                if popped is SUSPENDED:
                    self._wait_for_resume(burst=timeout is None)
                    if self._stop_requested:
                        return None
                    continue
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
                result = self._start(popped)
                if result is None:
                    continue  # gone meanwhile, or held by the rate limiter: pop again
                job, queue = result
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()
                self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
                return result  # RQ heartbeats here: the take just did
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if first:
                    # Where RQ's IDLE write (before its dequeue, after each job) would have failed:
                    # its work loop ends, and the worker restarts it once Redis is back (worker.py:
                    # the run that just ended is settled then, ``abandon_orphaned_jobs``).
                    raise
                log.error("worker %s: Redis unreachable (%s); retrying in %.0f s", self.name, exc, connection_wait)
                time.sleep(connection_wait)
                connection_wait = min(connection_wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def set_state(self, state: str, pipeline=None):
        """RQ's set_state, but RQ's IDLE outside its pipelines (after each job, before each pop, at
        ``rq resume``) is only noted: the take writes it when nothing is ready. RQ's own view
        (``get_state``: its warm shutdown reads it) changes as RQ's set_state changes it."""
        if pipeline is None and state == WorkerStatus.IDLE:
            self._state = state
            return None
        return super().set_state(state, pipeline=pipeline)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """RQ's heartbeat, but its default one outside a job (after each job, before each pop) is
        left to the take that comes next, which carries it."""
        if timeout is None and pipeline is None and self.get_state() == WorkerStatus.IDLE:
            return
        super().heartbeat(timeout, pipeline=pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check before each job: the take answers it (``_wait_for_resume``), no round trip."""

    def _wait_for_resume(self, burst: bool) -> None:
        """RQ's own check for ``rq suspend``, once the take found it: a burst worker stops
        (StopRequested), another waits for ``rq resume`` (or a stop), its state SUSPENDED meanwhile."""
        self._not_suspended_until = 0.0  # LeanBookkeeping's last read of the key: older than the take's
        super().check_for_suspension(burst)

    def _block(self, open_names: list[str], block: float) -> Taken | None:
        """BLPOP on the open queues for ``block`` s; the job to start, or None."""
        if not open_names:
            time.sleep(block)  # every queue paused: wait (heartbeating) for a resume
            return None
        prefix = self._ordered_queues[0].redis_queue_namespace_prefix
        answer = self.connection.blpop([prefix + name for name in open_names], max(block, 0.01))
        if answer is None:
            return None
        name, rq_id = answer[0].decode().removeprefix(prefix), answer[1].decode()
        fields = self._fair.after_blocking_take(name, rq_id)
        return None if fields is None else Taken(name, rq_id, fields)

    def _start(self, taken: Taken):
        """(job, queue) for a popped job; None when its hash is gone or the limiter held it."""
        queue = next(queue for queue in self._ordered_queues if queue.name == taken.queue)
        # RQ's Job.fetch without its HGETALL: the pop read the hash.
        job = self.job_class(parse_job_id(taken.rq_id), connection=self.connection, serializer=self.serializer)
        try:
            if not taken.fields:
                raise NoSuchJobError(f"No such job: {job.key}")
            job.restore(taken.fields)
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
