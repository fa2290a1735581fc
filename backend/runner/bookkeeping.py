"""RQ's own worker bookkeeping in fewer Redis round trips: the worker's heartbeat and state.

RQ's loop calls ``heartbeat()`` three times per job without a pipeline (before the pop, after
it, after the job), each an HSET and two EXPIREs sent one by one: 9 of the 21 round trips raw
``rq worker`` makes per no-op job (``python -m bench.profile_trips``). Its TTL is
``worker_ttl + 60`` (480 s by default), so a second one within seconds of the first tells Redis
nothing new. ``LeanBookkeeping`` (mixed in before RQ's worker class) changes only how these
writes travel, never what Redis holds for longer than ``HEARTBEAT_EVERY``:

- a heartbeat without a pipeline is one pipelined round trip, and is skipped when a default one
  went out less than ``HEARTBEAT_EVERY`` seconds ago and no heartbeat with another TTL (a job's:
  RQ sets the worker's TTL to the job's timeout + 60 as it starts it) came since;
- ``set_state`` without a pipeline travels with a heartbeat and RQ's suspension check in that
  same round trip, and is skipped when this process already wrote that very state (RQ sets IDLE
  at the end of a job and again at the start of the next pop);
- RQ's loop checks for ``rq suspend`` before each job (a heartbeat and an EXISTS, one round trip):
  a check made by that IDLE write less than ``SUSPENSION_FRESH`` seconds ago stands for it (RQ
  notices a suspension at the same point of its loop: after the job that ran meanwhile);
- RQ heartbeats a job once its task has ended, for the success or failure callback about to run:
  in a simple worker a job without callbacks skips that write (RQ's end MULTI follows at once, and
  nothing reads a job's ``last_heartbeat`` but displays). A forking worker's work-horse keeps it:
  when Redis is gone, that write's error is what ends the horse with a non-zero status (RQ's
  failure bookkeeping swallows its own), which tells the parent that the run's outcome reached
  no one (``tests/test_interruptions.py``); a simple worker holds the outcome itself.

Our workers put ``FairDequeue`` (``backend/runner/dequeue.py``) before this class: its pop script
carries the default heartbeat, RQ's IDLE state (written only when nothing is ready) and the
suspension check, so of the above only the heartbeats with a job's TTL, the other states and the
job heartbeat's skip remain in use there (``heartbeat_carried`` keeps the freshness rule).

Which process is alive is not decided by RQ's heartbeat here: the worker's lease is
(``backend/broker/leases.py``), renewed by its own thread.
"""

from __future__ import annotations

import time

from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now

#: A default heartbeat within this many seconds of the last one is not sent (TTL 480 s).
HEARTBEAT_EVERY = 5.0
#: How long a "not suspended" read with the worker's state write stands for RQ's own check.
SUSPENSION_FRESH = 1.0


class LeanBookkeeping:
    """Mixed in before RQ's ``Worker``/``SimpleWorker``: its heartbeat and state writes, batched."""

    #: Until when (``time.monotonic()``) a default heartbeat is redundant; 0: send the next one.
    _heartbeat_fresh_until = 0.0
    #: The state this process last wrote by itself (not in RQ's pipelines), else None.
    _state_written: str | None = None
    #: Until when (``time.monotonic()``) the last read of RQ's suspension flag (absent) stands.
    _not_suspended_until = 0.0

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """RQ's heartbeat; without a pipeline one round trip, or none when one is fresh."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            self._heartbeat_sent(timeout)
            return
        if timeout is None and time.monotonic() < self._heartbeat_fresh_until:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()
        self._heartbeat_sent(timeout)

    def heartbeat_carried(self, written: bool) -> None:
        """A default heartbeat went with another write (the worker's pop script): the next one
        within ``HEARTBEAT_EVERY`` is redundant; ``written`` False (the worker's hash was gone,
        nothing written): the next one goes out."""
        self._heartbeat_sent(None if written else 0)

    def _heartbeat_sent(self, timeout: int | None) -> None:
        # Another TTL (a job's, the monitor's) was set: the next default heartbeat must go out.
        self._heartbeat_fresh_until = time.monotonic() + HEARTBEAT_EVERY if timeout is None else 0.0

    def set_state(self, state: str, pipeline=None):
        """RQ's set_state; without a pipeline it goes with a heartbeat, and not at all when this
        process already wrote ``state`` (in RQ's pipelines it is written as RQ does)."""
        if pipeline is not None:
            self._state_written = None
            return super().set_state(state, pipeline=pipeline)
        if state == self._state_written and state == self.get_state():
            return None
        self._state_written = None
        with self.connection.pipeline(transaction=False) as pipe:
            super().set_state(state, pipeline=pipe)
            super().heartbeat(pipeline=pipe)
            pipe.exists(WORKERS_SUSPENDED)
            suspended = pipe.execute()[-1]
        self._heartbeat_sent(None)
        self._state_written = state
        self._not_suspended_until = 0.0 if suspended else time.monotonic() + SUSPENSION_FRESH
        return None

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check for ``rq suspend``, unless the state write just read that there is none."""
        if time.monotonic() < self._not_suspended_until:
            self._not_suspended_until = 0.0  # stands for one check: the next one asks Redis
            return
        super().check_for_suspension(burst)

    def handle_execution_ended(self, job, queue, heartbeat_ttl: int) -> None:
        """RQ notes the run's end; its job heartbeat only in a work-horse or for a callback about to run."""
        if self.is_horse or job._success_callback_name or job._failure_callback_name or job._stopped_callback_name:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()
