"""RQ's marking of a job started and the job's start check in one Redis round trip instead of two.

As a job starts, RQ's ``prepare_job_execution`` sends one MULTI..EXEC (the worker's heartbeat with
the job's TTL, the job's heartbeat, its status STARTED and worker name, PERSIST of its hash); then
the worker checks the job's cancel fence and Redis' history (``backend/broker/fences.py``), a
script of its own round trip (``python -m bench.profile_trips``). ``OneTripStart`` (mixed in
after ``ReportingMixin``, before RQ's worker class) builds RQ's same writes on RQ's pipeline and
queues the check's script last in that MULTI: the check sees Redis as RQ's writes left it, as
when it followed them, and ``ReportingMixin`` reads its verdict from the reply
(``start_checked``). A check that could not run there (its script not loaded in this Redis yet:
NOSCRIPT) is made on its own by ``StartChecks.check_start``, which loads it for the next jobs; a
MULTI refused as it was queued (an ACL user denied the history's key: nothing applied), and any
job after a refusal of the script, get RQ's own method and the lone check, as before.
"""

from __future__ import annotations

import time

from redis.exceptions import ResponseError
from rq import Queue
from rq.utils import now

from backend.broker import fences

#: No reply yet (RQ's own method ran, or a job not of the API's): the check is made on its own.
NOT_CHECKED = None


class OneTripStart:
    """Mixed in after ``ReportingMixin``, before RQ's ``Worker``/``SimpleWorker``: a job's start
    writes and its start check in one round trip."""

    #: The reply of the start check sent with the last job's start writes, else ``NOT_CHECKED``.
    start_checked: object = NOT_CHECKED

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's ``prepare_job_execution`` with the start check's script in its MULTI.

        RQ's writes are RQ's own calls in RQ's order, copied from RQ's method body (rq 3.0,
        ``rq/worker/base.py``). ``tests/test_start_trips.py`` checks that Redis holds the same
        after it as after RQ's followed by the lone check, and names the RQ method it copies.
        """
        self.start_checked = NOT_CHECKED
        if fences.scripts_refused():
            return super().prepare_job_execution(job, remove_from_intermediate_queue)
        self.log.debug("Worker %s: preparing for execution of job ID %s", self.name, job.id)
        with self.connection.pipeline() as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if remove_from_intermediate_queue:
                queue = Queue(job.origin, connection=self.connection)
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            fences.queue_start_check(pipeline, job.id)
            commands = list(pipeline.command_stack)
            try:
                # The check's own error as it runs (NOSCRIPT) is kept as its reply, and the check is
                # then made on its own.
                *written, checked = pipeline.execute(raise_on_error=False)
            except ResponseError:
                # Refused as it was queued (an ACL user without the history's key): nothing of the
                # MULTI was applied. RQ's own method, then the lone check, which notes the refusal.
                return super().prepare_job_execution(job, remove_from_intermediate_queue)
            # RQ's own writes raise as RQ's pipeline raises them (the command named).
            pipeline.raise_first_error(commands[:-1], written)
            self.log.debug("Worker %s: job preparation finished.", self.name)
        self.start_checked = checked
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")
        return None
