"""The worker: RQ's own Worker (forking) or SimpleWorker, plus reports to the API.

    python backend/worker.py --name worker-1 --queues high,default,low [--max-jobs N] [--burst] [--simple]

RQ does the work loop, priority order of queues, heartbeats, timeouts, the stop-job command
and warm shutdown on SIGTERM. This module adds what the store needs: it tells the API when
an attempt starts, how far it is and how it ended (a task raising ``Snooze`` ended it snoozed, no
failure), and gives the task its job context, wired by ``backend/runner/task_io.py`` to the job's
event stream, its captured log lines and its checkpoints. It takes its jobs fairly across owners and
never from a paused queue (backend/runner/dequeue.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
import traceback

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.exceptions import InvalidJobOperation
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from backend.broker.connection import connect_for, warn_if_evicting
from backend.broker.leases import LeaseKeeper
from backend.broker.queues import failure_record, last_line, register_queues
from backend.core import logs, protocol, secrets_check
from backend.core.interruptions import recorded_interruption, recorded_unstarted
from backend.core.settings import QUEUE_NAMES, SettingError, Settings, parse_owner_weights
from backend.core.size_caps import SizeCaps
from backend.runner.checkpoints import CheckpointClient
from backend.runner.dequeue import FairDequeue
from backend.runner.outcomes import HeldOutcome, lost_redis
from backend.runner.reporter import Reporter
from backend.runner.start_gate import StartChecks, StartGate
from backend.runner.startup import abandon_orphaned_jobs, forget_stale_registration, wait_for_redis
from backend.runner.task_io import EventSender, RunServices
from backend.tasks import Snooze, load_task_modules
from backend.tasks.context import activate, deactivate

__all__ = ["abandon_orphaned_jobs", "build_worker", "forget_stale_registration", "main", "wait_for_redis"]

log = logging.getLogger(__name__)


def _store_ids(job: RQJob) -> tuple[str, int] | None:
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
        if isinstance(exc_info[1], Snooze) and _store_ids(job) is not None:
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
        ids = _store_ids(job)
        if ids is None:
            return super().perform_job(job, queue, execution)
        job_id, attempt = ids
        if self.is_horse:
            self.reporter.reset()
        self._last_error = None
        held = None if self.reports_from_parent else HeldOutcome(job)
        # Progress, output, log lines and checkpoints of the run (backend/runner/task_io.py).
        context = self.run_services.context(job, job_id, attempt, self.reporter)
        token = activate(context)
        try:
            ok = super().perform_job(job, queue, execution)
        except Exception as exc:
            # RQ's own bookkeeping failed (Redis went away mid-job): the outcome reaches no one
            # else, and Redis may come back without the job's state. The task's own outcome when
            # it ended (this process holds it), else an interruption: run again at once.
            if held is not None and (job_id, attempt) not in self.reporter.refused:
                if not held.ended:
                    self.reporter.failed(job_id, attempt, lost_redis(exc), interrupted=True)
                elif isinstance(held.exception, Snooze):
                    self.reporter.snoozed(job_id, attempt, held.exception.seconds, held.exception.reason)
                elif held.error is None:
                    self._report_result(job_id, attempt, held.result)
                else:
                    self.reporter.failed(job_id, attempt, held.error)
            raise
        finally:
            deactivate(token)
        if (job_id, attempt) in self.reporter.refused:
            # The API refused this attempt (cancelled, or replaced by a newer attempt):
            # nothing to report, and RQ shows the run as stopped.
            job.set_status(RQStatus.STOPPED)
            return ok
        if self.reports_from_parent:
            return ok
        if ok:
            # RQ keeps the return value on the job it just ran: no Redis round trip.
            self._report_result(job_id, attempt, job._result)
        elif job.get_status(refresh=False) == "stopped":
            pass  # stopped (cancelled): nothing to report
        elif self._snoozed is not None:
            self.reporter.snoozed(job_id, attempt, self._snoozed.seconds, self._snoozed.reason)
        elif held is not None and held.ended and held.error is None:
            # The task returned, but RQ failed recording it (Redis failed in handle_job_success and
            # answered again for its failure bookkeeping, which returns False without raising):
            # the run completed, and this process holds its result. No cheap test makes Redis fail
            # between those two calls; the branch only reads what this process already holds.
            self._report_result(job_id, attempt, held.result)
        else:
            # _unstarted: the store never confirmed the start, the task never ran (start_gate.py).
            error = self._unstarted or self._last_error or "the task failed"
            self.reporter.failed(job_id, attempt, error, unstarted=bool(self._unstarted))
        return ok

    def _report_result(self, job_id: str, attempt: int, result: object) -> None:
        # A result the API would refuse (not JSON, NaN, over MAX_RESULT_BYTES) fails the
        # attempt with that reason: retried like any failure, never a dropped report.
        problem = self.reporter.caps.result_problem(result)
        if problem:
            self.reporter.failed(job_id, attempt, problem)
        else:
            self.reporter.completed(job_id, attempt, result)

    stop_requested = False

    def request_stop(self, signum, frame):
        """SIGTERM / SIGINT: finish the current job, then exit (RQ's warm shutdown)."""
        self.stop_requested = True
        super().request_stop(signum, frame)

    def prepare_job_execution(self, job: RQJob, remove_from_intermediate_queue: bool = False) -> None:
        """RQ marks the job started; then its fence is checked, and the store hears of it."""
        self._unstarted = None
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        ids = _store_ids(job)
        if ids is None:
            return
        self.check_start(job, *ids)  # raises when the task must not run (backend/runner/start_gate.py)


class JobServiceWorker(FairDequeue, ReportingMixin, Worker):
    """RQ's forking worker: each job runs in a child process.

    This process reports the start when it forks the work-horse and the end, read from RQ,
    when the work-horse exits: the work-horse then needs no connection to the API (it opens
    one only for progress).
    """

    reports_from_parent = True
    _horse_death: str | None = None
    _horse_ended = False

    def execute_job(self, job: RQJob, queue) -> None:
        ids = _store_ids(job)
        if ids is None:
            return super().execute_job(job, queue)
        self.reporter.started(*ids, self.name)
        self._horse_death = None
        self._horse_ended = False
        try:
            super().execute_job(job, queue)
        except Exception as exc:
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
        self._read_end(job, *ids)

    def monitor_work_horse(self, job: RQJob, queue, execution) -> None:
        super().monitor_work_horse(job, queue, execution)
        self._horse_ended = True  # the horse exited and RQ read (or handled) how

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

    def _report_end(self, job: RQJob, job_id: str, attempt: int) -> None:
        status = job.get_status(refresh=True)
        if status == RQStatus.FINISHED:
            self._report_result(job_id, attempt, job.return_value(refresh=True))
        elif status == RQStatus.FAILED:
            # An interruption only when RQ's whole record is one (the job was marked abandoned while
            # the horse ran), unstarted only when it is the horse's own line for a start the store
            # never confirmed: a task's traceback may end in either's words.
            record = None if self._horse_death else failure_record(job)
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


class JobServiceSimpleWorker(FairDequeue, ReportingMixin, SimpleWorker):
    """RQ's SimpleWorker: jobs run in the worker's own process (faster, less isolated)."""


def build_worker(
    *,
    name: str,
    queues: list[str],
    simple: bool,
    settings: Settings,
    connection: Redis,
) -> Worker:
    """A worker for ``queues`` (in priority order) reporting to the API of ``settings``."""
    reporter = Reporter(
        settings.api_base_url,
        str(settings.internal_service_token),
        retry_seconds=settings.report_retry_seconds,
        progress_interval=settings.progress_min_interval,
        caps=SizeCaps.from_settings(settings),
    )
    worker_class = JobServiceSimpleWorker if simple else JobServiceWorker
    worker = worker_class(
        queues,
        name=name,
        connection=connection,
        serializer=JSONSerializer,
        default_result_ttl=settings.rq_result_ttl,
        reporter=reporter,
        start_gate=StartGate(settings.api_base_url, str(settings.internal_service_token)),
        run_services=RunServices(
            EventSender(connection, history=settings.events_history, ttl=settings.events_ttl_seconds),
            CheckpointClient(
                settings.api_base_url, str(settings.internal_service_token), patience=settings.report_retry_seconds
            ),
        ),
    )
    worker.fair_share = settings.fair_share
    worker.owner_weights = parse_owner_weights(settings.owner_weights)
    return worker


def parse_args(argv: list[str] | None = None, settings: Settings | None = None) -> argparse.Namespace:
    settings = settings or Settings.load()
    parser = argparse.ArgumentParser(description="Run a job service worker.")
    parser.add_argument(
        "--name",
        default=settings.rq_worker_name or f"{socket.gethostname()}-{os.getpid()}",
        help="worker name, unique across hosts (default: RQ_WORKER_NAME or host-pid)",
    )
    parser.add_argument(
        "--queues",
        default=settings.rq_queue_names,
        help="queues in priority order (default: RQ_QUEUE_NAMES or high,default,low)",
    )
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--simple", action="store_true", help="run jobs in this process (RQ's SimpleWorker)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load()
    except SettingError as exc:  # e.g. OWNER_WEIGHTS: one line naming the setting, no traceback
        raise SystemExit(f"refusing to start the worker: {exc}") from None
    args = parse_args(argv, settings)
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    queues = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = [name for name in queues if name not in QUEUE_NAMES]
    if not queues or unknown:
        raise SystemExit(f"--queues must name some of {list(QUEUE_NAMES)}, got {args.queues!r}")
    if not settings.internal_service_token:
        raise SystemExit("INTERNAL_SERVICE_TOKEN is not set: the API would refuse this worker's reports")
    secrets_check.enforce_or_exit(settings, role="worker")
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set")
    load_task_modules(settings.task_modules)

    connection = connect_for(settings)
    # The lease thread gets a connection pool of its own: a forked work-horse must never
    # inherit a pool lock that this thread held at the moment of the fork.
    lease = LeaseKeeper(connect_for(settings), args.name, settings.worker_lease_seconds)
    wait_for_redis(connection, what=f"worker {args.name}")
    warn_if_evicting(connection, f"worker {args.name}")
    claim_deadline = time.monotonic() + 2 * settings.worker_lease_seconds
    while not lease.claim():
        # A restarted container often reuses its name: wait for the dead holder's lease to
        # lapse; a holder that keeps renewing is a live worker, and then this one gives up.
        if time.monotonic() > claim_deadline:
            raise SystemExit(f"a live worker is already named {args.name!r}; pick another --name")
        log.warning("worker %s: the name is leased; waiting for the lease to lapse", args.name)
        time.sleep(1)
    lease.start()
    try:
        while True:
            forget_stale_registration(connection, args.name)
            abandon_orphaned_jobs(connection, args.name, queues)
            register_queues(connection, queues)
            worker = build_worker(
                name=args.name, queues=queues, simple=args.simple, settings=settings, connection=connection
            )
            worker.reporter.check()
            try:
                worker.work(
                    burst=args.burst,
                    max_jobs=args.max_jobs,
                    with_scheduler=True,
                    logging_level=settings.log_level,
                )
            except RedisError as exc:
                log.warning("worker %s: lost Redis (%s)", args.name, exc)
            finally:
                # Whatever ends the loop, the reports of the jobs it ran are sent first.
                if not worker.reporter.flush(timeout=settings.report_retry_seconds):
                    log.error("worker %s: some reports were not delivered; the reconciler settles them", args.name)
                worker.reporter.close()
            if worker.stop_requested or args.burst or args.max_jobs:
                break
            # RQ's loop gave up (on some Redis errors, or a job it could not read): wait for
            # Redis if it is down, then go on working.
            log.warning("worker %s: RQ's work loop ended unexpectedly; restarting it", args.name)
            time.sleep(1)
            wait_for_redis(connection, what=f"worker {args.name}")
    except RedisError as exc:
        log.warning("worker %s: Redis unavailable while starting (%s)", args.name, exc)
    finally:
        lease.stop()
    log.info("worker %s stopped", args.name)
    return 0
