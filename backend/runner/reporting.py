"""The worker's reports of each attempt: RQ's worker hooks that tell the API how a run went.

``ReportingMixin`` is mixed into both worker classes (``backend/runner/worker.py`` the simple one,
``backend/runner/forking.py`` the forking one): the fence and start checks before a task runs
(``backend/runner/start_gate.py``), the task's job context, and the reports of its end through the
reporter's outbox (``backend/runner/reporter.py``), so a job never waits for the API.
"""

from __future__ import annotations

import logging
import traceback

from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from backend.core import protocol
from backend.runner.handover import Handover
from backend.runner.outcomes import HeldOutcome, completed_unrecorded, held_end, record_finished
from backend.runner.reporter import Reporter
from backend.runner.start_gate import StartChecks, StartGate
from backend.runner.task_io import RunServices
from backend.tasks import Snooze
from backend.tasks.context import activate, deactivate

log = logging.getLogger(__name__)


def store_ids(job: RQJob) -> tuple[str, int] | None:
    """The store's job id and attempt of an RQ job, or None for jobs not enqueued by the API."""
    meta = job.meta or {}
    if "job_id" in meta and "attempt" in meta:
        return str(meta["job_id"]), int(meta["attempt"])
    return None


class ReportingMixin(StartChecks):
    """Reports each attempt's start, progress and end to the API's internal endpoints.

    Reports go through the reporter's outbox, so a job never waits for the API. Before a
    task runs, its attempt's fence is checked in Redis (after RQ marked it started): an
    attempt the API cancelled or replaced is not run.
    """

    reporter: Reporter
    #: The forking worker reports starts and ends from its own process, not the work-horse.
    reports_from_parent = False
    #: What the running task raised to snooze (set where the task ran), else None.
    _snoozed: Snooze | None = None
    #: A forking worker's handover of a work-horse's end (backend/runner/handover.py).
    handover: Handover | None = None
    #: (job, reporter, held outcome, context) built by a forking parent for its next work-horse.
    _horse_kit: tuple | None = None

    def __init__(self, *args, reporter: Reporter, start_gate: StartGate, run_services: RunServices, **kwargs):
        super().__init__(*args, **kwargs)
        self.reporter = reporter
        self.start_gate = start_gate
        self.run_services = run_services
        self._last_error: str | None = None
        # RQ calls exception handlers with the task's exception; keep it for the report.
        self.push_exc_handler(self._remember_error)

    def _remember_error(self, job, exc_type, exc_value, tb) -> bool:
        self._last_error = "".join(traceback.format_exception_only(exc_type, exc_value)).strip()
        return True  # let RQ's other handlers run too

    def handle_exception(self, job: RQJob, *exc_info) -> None:
        """A task raising ``Snooze`` asked to run later: no failure, no traceback in the log."""
        if isinstance(exc_info[1], Snooze) and store_ids(job) is not None:
            self._snoozed = exc_info[1]
            log.info("job %s: %s", job.id, self._snoozed)
            return
        super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        """RQ records a snoozed run by the worker's one line (``protocol.snooze_record``): what the
        forking parent and the reconciler read as a snooze, never as the task's failure."""
        if self._snoozed is not None:
            # Cut as a reported reason is (Reporter.snoozed): the reconciler copies it to the store.
            reason = self.reporter.caps.shorten_message(self._snoozed.reason)
            exc_string = protocol.snooze_record(self._snoozed.seconds, reason)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def perform_job(self, job: RQJob, queue, execution) -> bool:
        self._unstarted = None  # never the verdict of an earlier job (start_gate.py)
        self._snoozed = None
        ids = store_ids(job)
        if ids is None:
            return super().perform_job(job, queue, execution)
        job_id, attempt = ids
        self._last_error = None
        kit = self._horse_kit if self.is_horse else None
        if kit is not None and kit[0] is job:
            # Built by the forking parent before the fork for this job (forking.py): the same
            # objects, made where they cost no page copied on write.
            _, self.reporter, held, context = kit
        else:
            if self.is_horse:
                self.reporter.reset()
            held, context = self._run_kit(job, job_id, attempt, self.reporter)
        token = activate(context)
        try:
            ok = super().perform_job(job, queue, execution)
        except Exception as exc:
            # RQ's own bookkeeping failed (Redis went away mid-job): the outcome reaches no one
            # else, and Redis may come back without the job's state. The task's own outcome when
            # it ended (this process holds it), else an interruption: run again at once.
            if (job_id, attempt) not in self.reporter.refused:
                self._report_held(held, job, job_id, attempt, exc)
            raise
        finally:
            deactivate(token)
        if (job_id, attempt) in self.reporter.refused:
            # The API refused this attempt (cancelled, or replaced by a newer attempt):
            # nothing to report, and RQ shows the run as stopped.
            job.set_status(RQStatus.STOPPED)
            return ok
        if self.reports_from_parent:
            # A work-horse whose task returned while RQ failed recording it (as below): the parent
            # would read RQ's "started" and take the run for one cut mid-way.
            completed_unseen = not ok and held.ended and held.error is None and self._snoozed is None
            if completed_unseen and not self._unstarted and self.handover is not None:
                self.handover.write(job.id, held_end(held, job_id, attempt, None, self.reporter.caps))
            return ok
        if ok:
            # RQ keeps the return value on the job it just ran: no Redis round trip.
            self._report_result(job_id, attempt, job._result)
        elif job.get_status(refresh=False) == "stopped":
            pass  # stopped (cancelled): nothing to report
        elif self._snoozed is not None:
            self.reporter.snoozed(job_id, attempt, self._snoozed.seconds, self._snoozed.reason)
        elif held.ended and held.error is None:
            # The task returned, but RQ failed recording it (Redis failed in handle_job_success and
            # answered again for its failure bookkeeping, which returns False without raising):
            # the run completed, and this process holds its result. No cheap test makes Redis fail
            # between those two calls; the branch only reads what this process already holds.
            if self._report_result(job_id, attempt, held.result):
                record_finished(self.connection, job, held.result)
        else:
            # _unstarted: the store never confirmed the start, the task never ran (start_gate.py).
            error = self._unstarted or self._last_error or "the task failed"
            self.reporter.failed(job_id, attempt, error, unstarted=bool(self._unstarted))
        return ok

    def _run_kit(self, job: RQJob, job_id: str, attempt: int, reporter: Reporter) -> tuple[HeldOutcome, object]:
        """What a run holds of its task (``HeldOutcome``) and the task's job context: progress,
        output, log lines and checkpoints of the run (backend/runner/task_io.py)."""
        held = HeldOutcome(job)
        return held, self.run_services.context(job, job_id, attempt, reporter)

    def _report_held(self, held: HeldOutcome, job: RQJob, job_id: str, attempt: int, exc: Exception) -> None:
        """Report the outcome this process holds of a run whose end RQ could not record."""
        end = held_end(held, job_id, attempt, exc, self.reporter.caps)
        if self.reports_from_parent:
            # A forking work-horse: its parent reads the end from Redis, which lost it, and would
            # take the run for one cut mid-way. The parent reports what the horse hands over
            # (backend/runner/handover.py), and records a completion in RQ.
            if self.handover is None or not self.handover.write(job.id, end):
                log.warning("job %s: the work-horse could not hand its outcome over", job_id)
            return
        self.reporter.end(end)
        if end["event"] == protocol.COMPLETED:
            completed_unrecorded.add(job.id, held.result)  # Redis is away: recorded when it is back

    def _report_result(self, job_id: str, attempt: int, result: object) -> bool:
        """Report a returned task: completed, unless the API would refuse its result (then
        False). A result the API would refuse (not JSON, NaN, over MAX_RESULT_BYTES) fails the
        attempt with that reason: retried like any failure, never a dropped report."""
        problem = self.reporter.caps.result_problem(result)
        if problem:
            self.reporter.failed(job_id, attempt, problem)
            return False
        self.reporter.completed(job_id, attempt, result)
        return True

    stop_requested = False

    def request_stop(self, signum, frame):
        """SIGTERM / SIGINT: finish the current job, then exit (RQ's warm shutdown)."""
        self.stop_requested = True
        super().request_stop(signum, frame)

    def prepare_job_execution(self, job: RQJob, remove_from_intermediate_queue: bool = False) -> None:
        """RQ marks the job started; then its fence is checked, and the store hears of it."""
        self._unstarted = None
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        ids = store_ids(job)
        if ids is None:
            return
        # Raises when the task must not run (backend/runner/start_gate.py). The check itself went
        # with RQ's writes where it could (backend/runner/start_trip.py).
        self.check_start(job, *ids, checked=getattr(self, "start_checked", None))
