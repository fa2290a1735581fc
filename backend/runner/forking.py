"""The forking worker: RQ's ``Worker``, each job in a work-horse child, reported by the parent.

The parent reports the start when it forks the work-horse and the end, read from RQ, when the
work-horse exits: the work-horse then needs no connection to the API (it opens one only for
progress and log lines).
"""

from __future__ import annotations

import copy
import logging
import os

from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import InvalidJobOperation
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.results import Result

from backend.broker.rq_records import last_line
from backend.core import protocol
from backend.core.interruptions import recorded_interruption, recorded_unstarted
from backend.runner.bookkeeping import LeanBookkeeping
from backend.runner.dequeue import FairDequeue
from backend.runner.handover import Handover
from backend.runner.horse_redis import ConnectAhead
from backend.runner.outcomes import lost_redis, record_finished
from backend.runner.reporting import ReportingMixin, store_ids
from backend.runner.start_trip import OneTripStart
from backend.runner.success import OneTripSuccess

log = logging.getLogger(__name__)


class JobServiceWorker(
    ConnectAhead, FairDequeue, LeanBookkeeping, OneTripSuccess, ReportingMixin, OneTripStart, Worker
):
    """RQ's forking worker: each job runs in a child process.

    This process reports the start when it forks the work-horse and the end, read from RQ,
    when the work-horse exits: the work-horse then needs no connection to the API (it opens
    one only for progress).
    """

    reports_from_parent = True
    _horse_death: str | None = None
    #: The work-horse exited (RQ's bookkeeping in this process may still fail after it).
    _horse_ended = False
    #: The end the work-horse handed over (RQ could not record it: backend/runner/handover.py).
    _handed_end: dict | None = None

    def execute_job(self, job: RQJob, queue) -> None:
        ids = store_ids(job)
        if ids is None:
            return super().execute_job(job, queue)
        self.reporter.started(*ids, self.name)
        self._horse_death = None
        self._horse_ended = False
        self._handed_end = None
        try:
            super().execute_job(job, queue)
        except Exception as exc:
            if self._handed_end is not None:
                self._report_handed(job)
                raise
            if self._horse_ended:
                # Redis went away after the work-horse ended (RQ's set_state): the horse wrote
                # its outcome to Redis, and the run is whole. Read it if Redis answers, else the
                # reconciler copies it once Redis is back (or, if Redis lost it, the job is
                # failed in RQ as this worker's orphan when its loop restarts, and runs again).
                self._read_end(job, *ids)
                raise
            # Redis went away while the work-horse ran: the store heard of the start, and no
            # one else would report an end. The API queues the job again at once, so the run
            # is cut here: its outcome could reach no one, and it must not run beside the next.
            self._end_horse()
            self.reporter.failed(*ids, lost_redis(exc), interrupted=True)
            raise
        if self._handed_end is not None:
            self._report_handed(job)
        else:
            self._read_end(job, *ids)

    def fork_work_horse(self, job: RQJob, queue) -> None:
        if self.handover is None:
            self.handover = Handover()
        self.handover.arm(job.id)
        ids = store_ids(job)
        if ids is not None:
            # The work-horse's own preamble built here, before the fork (issue 17: ~300 pages a
            # horse would copy on write): its reporter started afresh (``Reporter.reset``, as the
            # horse did), the run's held outcome and job context. The horse takes them as its own.
            reporter = copy.copy(self.reporter)
            reporter.reset()
            self._horse_kit = (job, reporter, *self._run_kit(job, *ids, reporter))
        try:
            super().fork_work_horse(job, queue)
        finally:
            # The parent's copies (the horse never returns here): its job is never performed here.
            self._horse_kit = None
            job.__dict__.pop("perform", None)

    def wait_for_horse(self):
        """RQ's wait for the work-horse; notes that it exited, and the end it handed over if any."""
        pid, status, rusage = super().wait_for_horse()
        # From here on a Redis error in RQ's bookkeeping (the status read, set_state) cuts no run.
        self._horse_ended = True
        if self._handed_end is None and self.handover is not None:
            self._handed_end = self.handover.take()
        return pid, status, rusage

    def _report_handed(self, job: RQJob) -> None:
        """Report the end the work-horse handed over, and record a completion in RQ."""
        end = self._handed_end
        log.warning("job %s: RQ could not record the run's end; the work-horse's own outcome is reported", job.id)
        self.reporter.end(end)
        if end["event"] == protocol.COMPLETED:
            record_finished(self.connection, job, end.get("result"))

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        """A work-horse that handed over a completion exited after RQ failed recording it: not the
        crash RQ takes it for (``_report_handed`` records the run finished instead)."""
        if self._handed_end is not None and self._handed_end["event"] == protocol.COMPLETED:
            return
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def teardown(self) -> None:
        super().teardown()
        if self.handover is not None and not self.is_horse:
            self.handover.close()

    def _read_end(self, job: RQJob, job_id: str, attempt: int) -> None:
        """Report the run's end as RQ recorded it."""
        try:
            self._report_end(job, job_id, attempt)
        except InvalidJobOperation:
            # The RQ job's hash is gone (deleted while it ran): its outcome is unknown, and
            # no one else would ever report it. As for a lost run: retried if it may be.
            self.reporter.failed(
                job_id, attempt, "JobLost: the RQ job was deleted before its outcome was read", interrupted=True
            )
        except RedisError as exc:
            # The reconciler copies the outcome from RQ once Redis answers again.
            log.warning("job %s: could not read its outcome from RQ: %s", job_id, exc)

    def _end_horse(self) -> None:
        """Kill the work-horse if one still runs (no horse: pid 0, never our own group)."""
        if self._horse_pid:
            try:
                self.kill_horse()
                self.wait_for_horse()
            except OSError as exc:
                log.warning("worker %s: could not end the work-horse %s: %s", self.name, self._horse_pid, exc)
            self._horse_pid = 0

    def _outcome(self, job: RQJob) -> tuple[RQStatus, Result | None]:
        """The RQ job's status and latest result, read in one round trip (RQ's own reads of them,
        ``get_status`` and ``latest_result``, take one each).

        Raises:
            InvalidJobOperation: the job's hash is gone.
        """
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hget(job.key, "status")
            pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
            status, latest = pipe.execute()
        if not status:
            raise InvalidJobOperation(f"Failed to retrieve status for job: {job.id}")
        result = None
        if latest:
            result_id, payload = latest[0]
            result_id = result_id.decode() if isinstance(result_id, bytes) else result_id
            result = Result.restore(job.id, result_id, payload, connection=self.connection, serializer=job.serializer)
        return RQStatus(status.decode() if isinstance(status, bytes) else status), result

    def _report_end(self, job: RQJob, job_id: str, attempt: int) -> None:
        status, result = self._outcome(job)
        if status == RQStatus.FINISHED:
            value = result.return_value if result is not None and result.type == Result.Type.SUCCESSFUL else None
            self._report_result(job_id, attempt, value)
        elif status == RQStatus.FAILED:
            # An interruption only when RQ's whole record is one (the job was marked abandoned while
            # the horse ran), unstarted only when it is the horse's own line for a start the store
            # never confirmed: a task's traceback may end in either's words. (As
            # ``rq_records.failure_record`` reads it: the latest result's whole text.)
            record = None if self._horse_death or result is None else (result.exc_string or "").strip() or None
            snooze = protocol.recorded_snooze(record)
            if snooze is not None:  # the work-horse's own record of a task that raised Snooze
                self.reporter.snoozed(job_id, attempt, *snooze)
                return
            error = self._horse_death or last_line(record) or "the task failed"
            marks = {"interrupted": recorded_interruption(record), "unstarted": recorded_unstarted(record)}
            self.reporter.failed(job_id, attempt, error, **marks)
        elif status != RQStatus.STOPPED:  # STOPPED: refused or cancelled, nothing to report
            # Queued or started after its work-horse exited: Redis lost what the horse wrote.
            self.reporter.failed(job_id, attempt, f"JobLost: RQ shows the job {status} after its run", interrupted=True)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        """The forked child died under the job (OOM killer, SIGKILL): say so in the report."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        code = os.waitstatus_to_exitcode(ret_val) if ret_val is not None else None
        reason = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        self._horse_death = f"WorkHorseKilled: the work-horse process died ({reason})"
