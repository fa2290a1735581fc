"""Schedules, the service: cron checks and the commands on schedules (create, fire, change).

Not the scheduler process (``backend/scheduler.py``, which calls ``fire_due`` every few
seconds; any number of them may run) nor the periodic thread (``backend/core/background.py``).
The rows are read and written by ``backend.store.schedules``.

Each due time of a schedule fires exactly once: the firing is recorded under a unique
(schedule, due time) key in the same transaction as the job it starts, so a second scheduler
racing for the same due time fails that insert and does nothing; on PostgreSQL the firing
first locks its schedule's row (``FOR NO KEY UPDATE SKIP LOCKED``), so a racing scheduler passes
over it instead of adding a job only to roll it back. "Due" is judged by the store's clock
(``backend.store.clock``) unless the caller passes ``now`` (tests): schedulers on hosts whose
clocks differ agree on it. A schedule that was missed
while no scheduler ran fires once at the next pass (``SCHEDULE_MISSED_POLICY=once``), or not
at all (``skip``); never once per missed tick.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, croniter

from backend.core.cursors import decode_cursor
from backend.core.errors import Conflict, NotFound, ValidationFailed
from backend.service.job_manager import JobManager, JobRequest
from backend.service.ownership import owned
from backend.store import clock, conflicts
from backend.store import schedules as schedule_rows
from backend.store.engine import transaction
from backend.store.errors import ConstraintViolated, RowVanished
from backend.store.jobs import Sessions
from backend.store.models import Job, ScheduledJob, utcnow
from backend.tasks import get_task

log = logging.getLogger(__name__)

MISSED_POLICIES = ("once", "skip")
#: A cron expression must be due within this many years (8: Feb 29 across a non-leap 2100).
MAX_YEARS_BETWEEN_RUNS = 8
#: The stored column's width; the longest IANA zone name has 32 characters.
MAX_CRON_LENGTH = 100
MAX_TIMEZONE_LENGTH = 64


def check_cron(expression: object) -> str:
    """Return a valid five-field cron expression.

    Raises:
        ValidationFailed: not a string, too long, not five fields (a seconds field would fire
            more than once a minute), not valid cron, or never due (``0 0 31 2 *``).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationFailed(f"cron must be a string like '*/5 * * * *', got {str(expression)[:40]!r}")
    if len(expression) > MAX_CRON_LENGTH:
        raise ValidationFailed(f"cron may have at most {MAX_CRON_LENGTH} characters, got {len(expression)}")
    fields = expression.split()
    if len(fields) != 5:
        raise ValidationFailed(
            f"cron must have 5 fields (minute hour day month weekday; at most one run a minute), got {expression!r}"
        )
    expression = " ".join(fields)
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter raises more than its own errors on some odd input
        valid = False
    if not valid:
        raise ValidationFailed(f"cron is not a valid expression, got {expression!r}")
    if next_fire_time(expression, "UTC", utcnow()) is None:
        raise ValidationFailed(
            f"cron is never due: {expression!r} matches no time in the next {MAX_YEARS_BETWEEN_RUNS} years"
        )
    return expression


@functools.cache
def known_timezones() -> frozenset[str]:
    """The IANA zone names of this system's time zone database."""
    return frozenset(available_timezones())


def check_timezone(name: object) -> str:
    """Return ``name`` if it names a real IANA zone.

    A path-like name is never opened: "America" (a directory of the database) or a
    10,000-character name used to reach ZoneInfo and fail there with an OSError.

    Raises:
        ValidationFailed: not a string, too long, or no zone of that name.
    """
    if not isinstance(name, str):
        raise ValidationFailed(f"timezone must be an IANA name like 'Europe/Paris', got {str(name)[:40]!r}")
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise ValidationFailed(f"timezone may have at most {MAX_TIMEZONE_LENGTH} characters, got {len(name)}")
    if name not in known_timezones():
        raise ValidationFailed(f"timezone is not a known IANA zone name like 'Europe/Paris', got {name!r}")
    return name


def next_fire_time(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first time after ``after`` (UTC) that ``cron`` matches in ``timezone``, in UTC;
    None when it matches none within ``MAX_YEARS_BETWEEN_RUNS`` (the schedule never fires)."""
    local = after.astimezone(ZoneInfo(timezone))
    try:
        nxt = croniter(cron, local, max_years_between_matches=MAX_YEARS_BETWEEN_RUNS).get_next(datetime)
    except CroniterBadDateError:
        return None
    return nxt.astimezone(ZoneInfo("UTC"))


class ScheduleManager:
    """The commands on schedules; the scheduler process calls ``fire_due``, the API the rest."""

    def __init__(self, jobs: JobManager, sessions: Sessions, *, missed_policy: str = "once"):
        if missed_policy not in MISSED_POLICIES:
            raise ValueError(f"SCHEDULE_MISSED_POLICY must be one of {MISSED_POLICIES}, got {missed_policy!r}")
        self.jobs = jobs
        self.sessions = sessions
        self.missed_policy = missed_policy

    # -- CRUD -----------------------------------------------------------------------------

    def create(
        self, *, owner: str, fields: dict, now: datetime | None = None, max_per_owner: int | None = None
    ) -> ScheduledJob:
        """Record a schedule (``fields`` already checked by the API).

        ``max_per_owner`` (``MAX_SCHEDULES_PER_OWNER`` for clients): an owner who keeps so many
        schedules gets no more. Each holds up to ``MAX_ARGS_BYTES`` of arguments, so without it
        one tenant's schedules grew the store and every listing of them without end.

        Raises:
            Conflict: the owner already has a schedule of that name, or ``max_per_owner`` (409).
        """
        now = now or self.now()
        schedule = ScheduledJob(id=f"sch_{uuid.uuid4().hex}", owner=owner, created_at=now, updated_at=now, **fields)
        schedule.next_run_at = next_fire_time(schedule.cron, schedule.timezone, now) if schedule.enabled else None
        try:
            held = schedule_rows.insert_schedule(self.sessions, schedule, max_per_owner=max_per_owner)
        except ConstraintViolated:
            raise Conflict(f"a schedule named {schedule.name!r} exists already") from None
        if held is not None:
            raise Conflict(
                f"{owner!r} has {held} schedules, the most one owner may keep "
                f"(MAX_SCHEDULES_PER_OWNER={max_per_owner}); delete one first",
                details={"setting": "MAX_SCHEDULES_PER_OWNER", "limit": max_per_owner},
            )
        return schedule

    def get(self, schedule_id: str, *, owner: str | None) -> ScheduledJob:
        return owned(schedule_rows.get_schedule(self.sessions, schedule_id), owner, "schedule", schedule_id)

    def page(
        self, *, owner: str | None, limit: int, cursor: str | None, omit: frozenset[str] = frozenset()
    ) -> Iterator:
        """Schedules oldest first from ``cursor`` on (the ``<microseconds>.<id>`` of the last one
        seen, as GET /jobs's cursors), at most ``limit``; the columns named in ``omit`` are not
        read. Rows are read a few at a time, so a caller that stops early holds no more.

        Raises:
            ValidationFailed: a cursor this API did not give out.
        """
        after = decode_cursor(cursor) if cursor else None
        return schedule_rows.schedule_page(self.sessions, owner=owner, after=after, limit=limit, omit=omit)

    def update(self, schedule_id: str, *, owner: str | None, fields: dict, now: datetime | None = None):
        now = now or self.now()
        name = fields.get("name")

        def change(schedule: ScheduledJob | None) -> dict:
            nonlocal name
            owned(schedule, owner, "schedule", schedule_id)
            name = fields.get("name", schedule.name)  # read now: after a failed flush the session cannot load it
            values = dict(fields)
            if {"cron", "timezone", "enabled"} & set(fields):
                changed = {"cron": schedule.cron, "timezone": schedule.timezone, "enabled": schedule.enabled, **fields}
                values["next_run_at"] = (
                    next_fire_time(changed["cron"], changed["timezone"], now) if changed["enabled"] else None
                )
            values["updated_at"] = now
            return values

        try:
            return schedule_rows.update_schedule(self.sessions, schedule_id, change)
        except ConstraintViolated:
            raise Conflict(f"a schedule named {name!r} exists already") from None
        except RowVanished:
            # Deleted by a concurrent DELETE between our read and our write.
            raise NotFound(f"no schedule {schedule_id!r}") from None

    def delete(self, schedule_id: str, *, owner: str | None) -> None:
        # A concurrent DELETE that won leaves nothing to delete, and this one answers 404 like
        # any other request for a schedule that is gone.
        if not schedule_rows.delete_schedule(
            self.sessions, schedule_id, lambda schedule: owned(schedule, owner, "schedule", schedule_id)
        ):
            raise NotFound(f"no schedule {schedule_id!r}")

    def jobs_of(self, schedule_id: str, *, limit: int = 50) -> list[Job]:
        """The jobs a schedule started, newest first."""
        return schedule_rows.schedule_jobs(self.sessions, schedule_id, limit=limit)

    # -- firing ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's time (the database's): what every host's scheduler and API agree on."""
        return clock.store_now(self.sessions)

    def fire_due(self, now: datetime | None = None) -> list[Job]:
        """Fire every enabled schedule whose next run is due at ``now`` (the store's time when
        not given); returns the new jobs."""
        now = now or self.now()
        fired = []
        for schedule in schedule_rows.due_schedules(self.sessions, now):
            job = self._fire(schedule, fire_at=schedule.next_run_at, now=now, advance=True)
            if job is not None:
                fired.append(job)
        return fired

    def run_now(self, schedule_id: str, *, owner: str | None, now: datetime | None = None) -> Job:
        """Fire a schedule now, outside its cron times (``POST /scheduled-jobs/<id>/run``)."""
        now = now or self.now()
        schedule = self.get(schedule_id, owner=owner)
        job = self._fire(schedule, fire_at=now, now=now, advance=False)
        if job is None:
            raise ValidationFailed(f"schedule {schedule_id} was fired at this instant already")
        return job

    def _fire(self, schedule: ScheduledJob, *, fire_at: datetime, now: datetime, advance: bool) -> Job | None:
        """Start the job of one firing, exactly once per (schedule, fire_at)."""
        if advance and self.missed_policy == "skip" and (now - fire_at).total_seconds() >= 60:
            # Missed while no scheduler ran: skip it, and only move on to the next time.
            self._advance(schedule, seen=fire_at, now=now, job_id=None)
            return None
        try:
            request = JobRequest(
                task=get_task(schedule.task),
                args=schedule.args,
                kwargs=schedule.kwargs,
                priority=schedule.priority,
                timeout=schedule.timeout,
                max_retries=schedule.max_retries,
            )
        except NotFound:
            log.error("schedule %s: task %r is not registered; disabling it", schedule.id, schedule.task)
            self.update(schedule.id, owner=None, fields={"enabled": False}, now=now)
            return None
        try:
            # A deadlock or serialization failure runs the firing again (nothing reached Redis yet).
            for run in conflicts.attempts():
                with run, transaction(self.sessions) as session:
                    if advance and not schedule_rows.lock_due(session, schedule.id, fire_at):
                        # Another scheduler is firing it, or fired it (or it was changed) since it
                        # was read: nothing to do, and no job added only to be rolled back.
                        log.info("schedule %s: %s taken by another scheduler", schedule.id, fire_at.isoformat())
                        return None
                    job = self.jobs.add_job(session, request, owner=schedule.owner, schedule_id=schedule.id)
                    values = {"last_run_at": now, "last_job_id": job.id, "updated_at": now}
                    if advance:
                        values["next_run_at"] = next_fire_time(schedule.cron, schedule.timezone, now)
                    schedule_rows.record_firing(
                        session, schedule_id=schedule.id, fire_at=fire_at, job_id=job.id, now=now, values=values
                    )
        except ConstraintViolated:
            # Another scheduler fired this due time first.
            log.info("schedule %s: %s fired by another scheduler", schedule.id, fire_at.isoformat())
            return None
        log.info("schedule %s fired job %s (due %s)", schedule.id, job.id, fire_at.isoformat())
        return self.jobs.enqueue_job(job.id)

    def _advance(self, schedule: ScheduledJob, *, seen: datetime, now: datetime, job_id: str | None) -> None:
        next_run_at = next_fire_time(schedule.cron, schedule.timezone, now)
        schedule_rows.advance_schedule(self.sessions, schedule.id, seen=seen, next_run_at=next_run_at, now=now)
