"""RQ's record of a job's success in one Redis round trip instead of three.

RQ's ``handle_job_success`` WATCHes the job's dependents set, reads it (SMEMBERS) and then sends
its MULTI..EXEC (the worker's counts, the status FINISHED, the result, the registries, the
execution's removal): three round trips per job, two of them for a set that is empty for nearly
every job (``python -m bench.profile_trips``). ``OneTripSuccess`` (mixed in before RQ's worker
class) sends RQ's same writes as one MULTI..EXEC that also reads the dependents set, and only when
that set held ids does RQ's own ``Queue.enqueue_dependents`` follow, under its own WATCH.

Why no dependent is lost or released twice: a child is added to the set by RQ's enqueue path
(``Queue.setup_dependencies``), which WATCHes the parent's hash, reads its status and then adds
itself in its own MULTI..EXEC. Our MULTI writes the parent's status FINISHED into that hash and
reads the set, atomically. So either the child's EXEC came first (our read sees it, and RQ's
``enqueue_dependents`` releases it exactly as RQ's own success would, checking its other parents
under its WATCH), or it came after: then its WATCH on the parent's hash fails its EXEC if our EXEC
landed between its read and its write, and its second look finds the parent FINISHED and enqueues
it at once. Releasing twice is RQ's own concern, unchanged: its ``move_dependents_to_ready`` and
``ReadyJobRegistry.enqueue_jobs`` each claim a child under WATCH.

What differs from RQ: RQ moves the ready dependents in the same EXEC as the success; here they
move one round trip later. A worker that dies in between (or a Redis error there) leaves them
deferred behind a FINISHED parent; the API releases a deferred child when it applies the parent's
completion (``Dependencies._release``: the deferred copy is replaced by a ready one), and its
reconciler when that failed (``release_if_due``). A Redis error in that follow-up is logged, not
raised: the success is already recorded, and RQ would otherwise record the run failed over it.
"""

from __future__ import annotations

import logging

from rq.job import JobStatus
from rq.rate_limit import release_slot

log = logging.getLogger(__name__)


class OneTripSuccess:
    """Mixed in before RQ's ``Worker``/``SimpleWorker``: a job's success in one round trip."""

    def handle_job_success(self, job, queue, started_job_registry, execution):
        """RQ's ``handle_job_success`` with the dependents read inside its MULTI, not under a WATCH.

        A copy of RQ's method body (rq 3.0, ``rq/worker/base.py``), not an override calling it:
        RQ sends the WATCH and the SMEMBERS before any hook it offers, on a pipeline it makes
        itself, so no override around it can drop them. The writes are RQ's own calls on RQ's
        pipeline parameters, in RQ's order; ``tests/test_success_trips.py`` checks that Redis
        holds the same after it as after RQ's, and names the RQ method it copies. A job that
        repeats or keeps no result takes RQ's own path (its hash is gone or requeued after the
        EXEC, which the follow-up's parent check reads).
        """
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl == 0 or (job.repeats_left is not None and job.repeats_left > 0):
            return super().handle_job_success(job, queue, started_job_registry, execution)
        with self.connection.pipeline() as pipeline:
            pipeline.multi()
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            job._handle_success(
                result_ttl,
                pipeline=pipeline,
                worker_name=self.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.smembers(job.dependents_key)
            dependents = pipeline.execute()[-1]
        if dependents:
            self._release_dependents(job, queue)
        release_slot(job)
        if self.log_job_description:
            self.log.info(
                "Successfully completed %s job in %ss on worker %s",
                job.description,
                job.ended_at - job.started_at,
                self.name,
            )
        else:
            self.log.info(
                "Successfully completed job %s in %ss on worker %s", job.id, job.ended_at - job.started_at, self.name
            )
        return None

    def _release_dependents(self, job, queue) -> None:
        """RQ's own release of the job's dependents (its WATCH, its checks of their other parents)."""
        try:
            queue.enqueue_dependents(job)
        except Exception:
            log.exception(
                "job %s: finished, but its dependents could not be released now; the API releases them "
                "when it applies the job's completion",
                job.id,
            )
