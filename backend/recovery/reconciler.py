"""The reconciler: compares the job store with Redis and settles every difference.

It runs at API start and then every ``RECONCILE_INTERVAL`` seconds in the API process
(``python -m backend recover`` runs one pass). One reconciler acts at a time, so any number of
API processes on any number of hosts is safe: the leader holds a PostgreSQL advisory lock for
its pass when the store is PostgreSQL (``backend.store.leadership``: a Redis failover that loses
a key cannot make two leaders), a Redis lock renewed during the pass on SQLite (one host). A
leader checks that it still leads before each change, and stops when it does not. What it
settles:

- PENDING rows that never reached a queue (Redis was down, the API died mid-submit): enqueued.
- QUEUED rows that no queue or registry holds (a submission whose enqueue failed or whose API
  died before it, a worker popped the job with LPOP and died before registering it, an evicted
  or deleted hash, a Redis that restarted empty): a new attempt is enqueued.
- PROCESSING rows whose worker's lease expired: an interruption, not a failure (queued again at
  once, no retry spent; FAILED past ``max_interruptions``: ``backend.core.interruptions``).
  Rows whose RQ job already ended: RQ's outcome is copied.

Suspects (lost or dead) are looked at twice, ``confirm_delay`` apart, before anything is done,
so that a job moving between a queue and a worker in that instant is not taken for lost. "Quiet
for longer than the grace period" is measured by the database's clock (``store.clock``), which
wrote ``updated_at``; the two looks are timed by this process's own monotonic clock.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta

from backend.broker import fair_queue, leases
from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter, RQJob
from backend.broker.rq_records import failure_record, last_line, outcome, rq_status
from backend.core.errors import JobServiceError
from backend.core.interruptions import recorded_interruption, recorded_unstarted
from backend.core.protocol import recorded_snooze
from backend.core.size_caps import SizeCaps
from backend.core.states import REQUEUE_FROM, JobStatus
from backend.service.job_manager import JobManager
from backend.service.queue_pauses import QueuePauses
from backend.service.rate_limits import RateLimits
from backend.store import clock, counts, job_scans, leadership
from backend.store.jobs import Sessions
from backend.store.models import Job

log = logging.getLogger(__name__)

#: The Redis lock of the reconciler's leadership on a SQLite store, and its TTL: renewed every
#: third of it during a pass, so it only bounds how long a holder killed mid-pass keeps it.
LOCK_KEY = "jobservice:reconciler:lock"
LOCK_SECONDS = 15
# RQ statuses, as text (rq.job.JobStatus values). "rate_limited": held back by the task's
# concurrency limit, released by RQ when a slot frees.
_WAITING = {"queued", "deferred", "scheduled", "rate_limited"}
_ENDED = {"finished", "failed", "stopped", "canceled"}
#: How RQ ends a run its worker refused before the task (``backend.runner.start_gate``), and the
#: exception its record's last line names (``tests/test_bulk_cancel.py`` checks the name).
_REFUSABLE = {"failed", "stopped"}
REFUSED = "backend.runner.start_gate.AttemptRefused"
# Seconds between touches of the leader during a wait: well under leadership.IDLE_TIMEOUT.
_TOUCH_EVERY = 5.0


@dataclass
class ReconcileReport:
    """What one pass did, by job id."""

    enqueued: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.enqueued, self.requeued, self.retried, self.failed, self.copied))

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "enqueued": self.enqueued,
            "requeued": self.requeued,
            "retried": self.retried,
            "failed": self.failed,
            "copied": self.copied,
        }


class Reconciler:
    def __init__(
        self,
        manager: JobManager,
        sessions: Sessions,
        queues: QueueAdapter,
        *,
        lease_seconds: float,
        grace_seconds: float = 2.0,
        confirm_delay: float = 0.5,
        caps: SizeCaps | None = None,
        pauses: QueuePauses | None = None,
        rate_limits: RateLimits | None = None,
    ):
        self.manager = manager
        #: Paused queues: each pass puts the store's record back into Redis (a flushed Redis).
        self.pauses = pauses
        #: Rate limit overrides: each pass puts the store's record back into Redis, as the pauses.
        self.rate_limits = rate_limits
        self.sessions = sessions
        # An outcome copied from RQ gets the caps a worker's report gets (backend/core/size_caps.py).
        self.caps = caps or SizeCaps()
        self.queues = queues
        self.grace = timedelta(seconds=grace_seconds)
        self.confirm_delay = confirm_delay
        # A lease must be seen missing for this long before its worker counts as dead: after
        # a Redis outage or an empty restart, live workers need up to a renewal period
        # (a third of the lease) to put their leases back.
        self.dead_after = lease_seconds / 2
        self._missing_since: dict[str, float] = {}
        #: When the pass that met Redis down began (None: Redis answered the last pass).
        self._down_since: float | None = None
        self._lock_token = f"reconciler-{uuid.uuid4().hex}"
        self.engine = sessions.kw["bind"]

    # -- one pass -----------------------------------------------------------------------

    def run_once(self) -> ReconcileReport | None:
        """One pass over every live job; None when another reconciler leads."""
        started = time.monotonic()
        if self._down_since is not None:
            # Redis did not answer from then until now (an outage, a failover): its keeper could not
            # put a lease back meanwhile, so that time is not counted as missing. The time counted
            # before it is kept: a Redis that fails every other pass still lets a dead worker die.
            outage = started - self._down_since
            self._missing_since = {name: since + outage for name, since in self._missing_since.items()}
            self._down_since = None
        try:
            if self.pauses is not None:
                # First, so that after an empty Redis restart the paused set is back before this
                # pass puts a lost job on a paused queue; its own try: recovery matters more.
                try:
                    self.pauses.sync()  # every process's pass: one small read and a compare
                except Exception as exc:
                    log.warning(
                        "reconciler: paused queues not synced, recovery goes on (%s: %s)", type(exc).__name__, exc
                    )
            if self.rate_limits is not None:
                try:
                    self.rate_limits.sync()  # the overrides, as the pauses (few rows)
                except Exception as exc:  # recovering jobs matters more; the next pass tries again
                    log.warning("reconciler: rate limit overrides not synced (%s: %s)", type(exc).__name__, exc)
            try:  # fair share's state of queues with nothing waiting (a queue no worker pops keeps none)
                fair_queue.drop_idle_state(self.queues.connection, self.queues.queues)
            except Exception as exc:
                log.warning("reconciler: idle fair-share state not dropped (%s: %s)", type(exc).__name__, exc)
            with self._leadership() as leader:
                return self._pass(leader) if leader is not None else None
        except BrokerError:
            self._down_since = started
            raise

    @contextlib.contextmanager
    def _leadership(self) -> Iterator[leases.HeldLock | leadership.Leader | None]:
        """The pass's leadership: the store's advisory lock on PostgreSQL, else the Redis lock."""
        if leadership.supported(self.engine):
            with leadership.lead(self.engine, leadership.RECONCILER_KEY) as leader:
                yield leader
            return
        # Taken with this reconciler's own token, so that a lock it left behind when Redis died
        # mid-pass (and came back from its AOF) is still its own; LOCK_SECONDS read now, so
        # tests can shorten it.
        with leases.exclusive(self.queues.connection, LOCK_KEY, token=self._lock_token, seconds=LOCK_SECONDS) as held:
            yield held

    def _pass(self, leader: leases.HeldLock | leadership.Leader) -> ReconcileReport:
        report = ReconcileReport()
        try:
            counts.roll_up(self.sessions)  # fold the job-count deltas (bounded; exact either way)
        except Exception as exc:
            # The counts stay exact unfolded (readers add the deltas): recovering jobs matters more.
            log.warning("reconciler: job-count roll-up failed, recovery goes on (%s: %s)", type(exc).__name__, exc)
        # holds() between the steps too: a leader that lost its lock (its connection cut, a
        # Redis lock taken over) stops before acting on what it read.
        if not leader.holds():
            return report
        cutoff = clock.now(self.engine) - self.grace
        live = job_scans.live_rows(self.sessions, cutoff)
        if not live or not leader.holds():
            return report
        # Enqueueing a PENDING row and copying an ended RQ job's outcome are safe on one look.
        suspects = self.confirmed(live, certain=("enqueue", "copy", "release"), leader=leader)
        jobs = {job.id: job for job in live}
        for done, (job_id, (action, rq_job)) in enumerate(suspects.items()):
            if not leader.holds():
                # Another reconciler may lead by now: what this one saw is its to settle.
                log.warning(
                    "reconciler: lost its leadership mid-pass; %d job(s) left to the leader", len(suspects) - done
                )
                break
            try:
                self._act(jobs[job_id], action, rq_job, report)
            except JobServiceError as exc:
                # The job moved on meanwhile (a report landed): nothing to settle.
                log.info("job %s: reconciler left it (%s)", job_id, exc.message)
            except BrokerError:
                raise  # Redis is gone: end this pass, the next one will see
            except Exception:
                # One job that cannot be settled must not keep the others from it.
                log.exception("job %s: reconciler could not settle it (%s)", job_id, action)
        if report:
            log.warning("reconciler: %s", {k: len(v) for k, v in report.as_dict().items() if v})
        return report

    def confirmed(
        self,
        jobs: list[Job],
        *,
        patient: bool = True,
        certain: Iterable[str] = (),
        leader: leases.HeldLock | leadership.Leader | None = None,
    ) -> dict[str, tuple[str, RQJob | None]]:
        """The verdicts of ``diagnose`` that hold when looked at twice, ``confirm_delay`` apart.

        A job moving between a queue and a worker in that instant looks lost or dead once, so
        a verdict is kept only when the second look agrees, except for actions in ``certain``.
        No second look when every verdict is ``enqueue`` (nothing moves a PENDING job).
        ``leader``, if given, is touched between the looks, so the wait never idles it out.
        """
        certain = frozenset(certain)
        verdicts = self.diagnose(jobs, patient=patient)
        if any(action != "enqueue" for action, _ in verdicts.values()):
            self._wait(self.confirm_delay, leader)
            again = self.diagnose(jobs, patient=patient)
            verdicts = {
                job_id: verdict
                for job_id, verdict in verdicts.items()
                if verdict[0] in certain or again.get(job_id, (None,))[0] == verdict[0]
            }
        return verdicts

    @staticmethod
    def _wait(seconds: float, leader: leases.HeldLock | leadership.Leader | None) -> None:
        """Sleep ``seconds``, touching ``leader`` before, after and every few seconds between."""
        deadline = time.monotonic() + seconds
        while True:
            if leader is not None:
                leader.holds()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _TOUCH_EVERY))

    def diagnose(self, jobs: list[Job], *, patient: bool = True) -> dict[str, tuple[str, RQJob | None]]:
        """What each job needs: enqueue, requeue (lost), dead (worker died), copy (RQ ended) or
        fenced (RQ ended a run its worker refused, fenced by a writer that never wrote).

        Args:
            patient: count a worker dead only once its lease was seen missing for a while
                (False: as soon as it is missing, for operators' commands).
        """
        queued_ids = self.queues.queued_ids()
        # A job waiting in its queue, its hash present, is fine: only the others' RQ jobs are
        # read (a backlog of thousands would otherwise be read and decoded every pass).
        waiting = self.queues.existing(
            [job.rq_job_id for job in jobs if job.status == JobStatus.QUEUED and job.rq_job_id in queued_ids]
        )
        rq_jobs = self.queues.fetch_many([job.rq_job_id for job in jobs if job.rq_job_id not in waiting])
        # An ended RQ job whose attempt is fenced while the store still runs that attempt: the
        # worker refused it for a cancel or a new attempt that the store never recorded (the API
        # died or the store failed between the fence and the write), so it never ran.
        # Only a refusal: a run that passed its start check before the fence, and ended, is
        # copied as any other (it ran).
        fenced = {
            rq_id
            for rq_id in self.queues.fenced(
                [rq_id for rq_id, rq_job in rq_jobs.items() if rq_job is not None and rq_status(rq_job) in _REFUSABLE]
            )
            if (last_line(failure_record(rq_jobs[rq_id])) or "").startswith(f"{REFUSED}: ")
        }
        workers = {job.worker for job in jobs} | {rq.worker_name for rq in rq_jobs.values() if rq is not None}
        dead = self._dead_workers({name or "" for name in workers}, patient=patient)
        verdicts: dict[str, tuple[str, RQJob | None]] = {}
        deferred: list[Job] = []
        for job in jobs:
            if job.rq_job_id in waiting:
                continue
            rq_job = rq_jobs.get(job.rq_job_id)
            action = "fenced" if job.rq_job_id in fenced else self._verdict(job, rq_job, queued_ids, dead)
            if action is not None:
                verdicts[job.id] = (action, rq_job)
            elif job.depends_on and rq_job is not None and rq_status(rq_job) == "deferred":
                deferred.append(job)
        # Deferred by RQ while every parent has ended in the store: its release was missed (Redis
        # failed as its last parent's end was applied), so nothing else will let it run.
        if deferred:
            ended = job_scans.ended_ids(self.sessions, {p for job in deferred for p in job.depends_on})
            for job in deferred:
                if ended.issuperset(job.depends_on):
                    verdicts[job.id] = ("release", rq_jobs.get(job.rq_job_id))
        return verdicts

    def _dead_workers(self, names: set[str], *, patient: bool) -> set[str]:
        """Workers whose lease has been missing for at least ``dead_after`` seconds."""
        alive = leases.alive(self.queues.connection, names - {""})
        now = time.monotonic()
        for name in alive:
            self._missing_since.pop(name, None)
        self._missing_since = {n: t for n, t in self._missing_since.items() if n in names}
        dead = set()
        for name in names - alive:
            if not patient or now - self._missing_since.setdefault(name, now) >= self.dead_after:
                dead.add(name)
        return dead

    @staticmethod
    def _verdict(job: Job, rq_job: RQJob | None, queued_ids: set[str], dead: set[str]) -> str | None:
        if job.status == JobStatus.PENDING:
            return "enqueue"
        if rq_job is None:
            if job.status == JobStatus.QUEUED:
                return "requeue"
            return "dead" if (job.worker or "") in dead else None
        status = rq_status(rq_job)
        if status in _ENDED:
            return "copy"
        if status == "started":
            return "dead" if (rq_job.worker_name or job.worker or "") in dead else None
        if status == "queued":
            if job.rq_job_id in queued_ids:
                return None
            if job.status == JobStatus.PROCESSING:
                # Popped and reported started, but RQ has not marked it started yet.
                return "dead" if (job.worker or "") in dead else None
            return "requeue"
        if status in _WAITING:
            return None
        # "created": RQ never finished enqueueing it.
        return "requeue" if job.status == JobStatus.QUEUED else None

    def _act(self, job: Job, action: str, rq_job: RQJob | None, report: ReconcileReport) -> None:
        manager = self.manager
        if action == "enqueue":
            if manager.enqueue_job(job.id).status != JobStatus.PENDING:
                report.enqueued.append(job.id)
        elif action == "requeue":
            manager.requeue_lost(job.id, attempt=job.attempt, reason="not in any RQ queue or registry")
            report.requeued.append(job.id)
        elif action == "dead":
            worker = (rq_job.worker_name if rq_job else None) or job.worker or "unknown"
            self._record_start(job, rq_job)
            error = f"WorkerDied: worker {worker} stopped while running the job"
            after = manager.mark_interrupted(job.id, attempt=job.attempt, error=error)
            if rq_job is not None:
                self.queues.abandon(rq_job, error)
            (report.failed if after.status == JobStatus.FAILED else report.retried).append(job.id)
        elif action == "copy":
            self._copy_outcome(job, rq_job, report)
        elif action == "fenced":
            # Not copied as the attempt's failure: it never ran. A new attempt, nothing spent (a
            # cancel still under way finds it and fences that one; see Cancels.cancel_job).
            reason = f"attempt {job.attempt} was fenced for a cancel or a new attempt the store never recorded"
            manager.requeue_unstarted(job.id, attempt=job.attempt, reason=reason)
            report.requeued.append(job.id)
        elif action == "release" and manager.release_if_due(job.id):
            report.enqueued.append(job.id)

    def _record_start(self, job: Job, rq_job: RQJob | None) -> None:
        """Copy an attempt's start from RQ when its worker's report never came (the worker
        died, or its reports were lost): the attempt then names the worker that ran it."""
        # REQUEUE_FROM: the statuses before a worker's start, the only ones a start can follow.
        if rq_job is None or job.status not in REQUEUE_FROM or not rq_job.worker_name:
            return
        started = rq_job.started_at
        if started is not None:
            # RQ's time is the worker's own clock: never later than now by the store's.
            started = min(started if started.tzinfo else started.replace(tzinfo=UTC), clock.now(self.engine))
        with contextlib.suppress(JobServiceError):
            self.manager.mark_started(job.id, attempt=job.attempt, worker=rq_job.worker_name, at=started)

    def _copy_outcome(self, job: Job, rq_job: RQJob, report: ReconcileReport) -> None:
        self._record_start(job, rq_job)
        status, result = outcome(rq_job)
        problem = self.caps.result_problem(result) if status == "finished" else None
        if status == "finished" and problem is None:
            self.manager.mark_completed(job.id, attempt=job.attempt, result=result)
        else:
            record = failure_record(rq_job)
            error = self.caps.shorten_error(problem or last_line(record) or f"RQ job {status}")
            snooze = recorded_snooze(record) if problem is None else None
            if snooze is not None:
                # The worker's own line for a task that asked to run later: no failure. Its reason is
                # cut as a reported one is (an older worker wrote it whole into RQ's record).
                reason = self.caps.shorten_message(snooze[1])
                self.manager.mark_snoozed(job.id, attempt=job.attempt, seconds=snooze[0], reason=reason)
            elif problem is None and recorded_unstarted(record):
                # The worker's own line for a start the store never confirmed: its task never ran,
                # so no run was cut (neither a retry nor an interruption spent).
                self.manager.requeue_unstarted(job.id, attempt=job.attempt, reason=error)
            elif problem is None and recorded_interruption(record):
                # A worker that died (marked so by its restarted namesake, or by RQ's cleanup) is
                # no fault of the job: it runs again at once, no retry spent. Judged by the whole
                # record: a task's traceback may end in any words it likes.
                self.manager.mark_interrupted(job.id, attempt=job.attempt, error=error)
            else:
                self.manager.mark_failed(job.id, attempt=job.attempt, error=error)
        report.copied.append(job.id)
