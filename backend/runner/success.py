"""RQ's record of a job's success in one Redis round trip instead of three.

RQ's ``handle_job_success`` WATCHes the job's dependents set, reads it (SMEMBERS) and then sends
its MULTI..EXEC (the worker's counts, the status FINISHED, the result, the registries, the
execution's removal): three round trips per job, two of them for a set that is empty for nearly
every job (``python -m bench.profile_trips``). ``OneTripSuccess`` (mixed in before RQ's worker
class) builds RQ's same writes on RQ's pipeline and sends them as one script that applies them
only while the job has no dependents set; when it has one, nothing is written and RQ's own
``handle_job_success`` runs instead, dependents and success in one transaction as RQ does.

Why no dependent is lost or released twice: with no dependents set, the script's writes, the
status FINISHED in the job's hash among them, are atomic with its look at the set. A child is
added to the set by RQ's enqueue path (``Queue.setup_dependencies``), which WATCHes the parent's
hash, reads its status and adds itself in its own MULTI..EXEC: if the script landed between its
read and its EXEC, that EXEC is refused by the write to the watched hash, and its retry finds the
parent FINISHED and enqueues the child at once. A child added before the script is in the set,
and RQ's own path releases it in the same transaction as the parent's success, WATCHing the
other parents' hashes: two parents ending together release a shared child once (a release one
round trip after the success could not: both parents, each seeing the other FINISHED, released it).
"""

from __future__ import annotations

from rq.job import JobStatus
from rq.rate_limit import release_slot

#: KEYS[1]: the job's dependents set. ARGV: the commands to apply, each as its length and its
#: words. Nothing is written while the set exists (returns 0); else every command (returns 1).
_APPLY_IF_NO_DEPENDENTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


class OneTripSuccess:
    """Mixed in before RQ's ``Worker``/``SimpleWorker``: a job's success in one round trip."""

    def handle_job_success(self, job, queue, started_job_registry, execution):
        """RQ's ``handle_job_success`` as one script, unless the job has dependents (then RQ's own).

        RQ's writes are RQ's own calls on a pipeline of RQ's, in RQ's order, copied from RQ's
        method body (rq 3.0, ``rq/worker/base.py``): RQ sends the WATCH and the SMEMBERS before any
        hook it offers, on a pipeline it makes itself, so no override around it can drop them.
        The pipeline is never sent: its commands are the script's arguments.
        ``tests/test_success_trips.py`` checks that Redis holds the same after it as after RQ's,
        and names the RQ method it copies. A job that repeats or keeps no result takes RQ's path.
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
            commands = [args for args, _options in pipeline.command_stack]
            pipeline.reset()
        flat: list = []
        for args in commands:
            flat.append(len(args))
            flat.extend(args)
        if not self._one_trip_script()(keys=[job.dependents_key], args=flat):
            # Dependents to release: RQ's own success, which releases them in its transaction.
            return super().handle_job_success(job, queue, started_job_registry, execution)
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

    def _one_trip_script(self):
        """The script, registered on this worker's connection (redis-py: EVALSHA, loaded once)."""
        script = getattr(self, "_success_script", None)
        if script is None or script.registered_client is not self.connection:
            script = self._success_script = self.connection.register_script(_APPLY_IF_NO_DEPENDENTS)
        return script
