"""Why a live job that is not running waits: ``waiting_reason``, ``resumes_at``,
``queue_position`` and ``waiting_detail`` of the job's JSON.

A job that waits shows ``QUEUED`` (or ``PENDING``) whatever it waits for; these fields say
what. They are decided here, in one function over the job's row and cheap broker facts
(backend/broker/waiting_facts.py), the first that holds in this order:

- ``snoozed`` / ``retry_backoff``: its next attempt waits until ``next_retry_at`` (a snooze if
  the attempt before ended SNOOZED, else a failure's backoff or an unconfirmed start);
- ``scheduled``: ``run_at`` is ahead;
- ``dependencies``: jobs it depends on have not ended (``waiting_for``);
- ``queue_paused``: its queue is paused (``POST /queues/<name>/pause``), workers start none of its jobs;
- ``rate_limit``: its task's rate limit per key holds it (out of the queue list) until ``resumes_at``,
  its own turn at the key's current limit (an estimate: the key's next slot, never before now, plus
  one window per ``limit`` held jobs of the key ahead of it); read only for tasks that declare a
  rate limit: one round trip for a list's page, never one per row;
- ``concurrency_limit``: its task's concurrency limit holds it back in RQ;
- ``no_worker``: no live worker listens on its queue;
- ``queued``: waiting for a worker to take it (``queue_position`` when known: under fair share an
  estimate of the order the workers' fair pop takes the queue's jobs in, not RQ's list order).

Without Redis's facts (Redis down) the reason is what the row alone says: the first three, or
``queued``. The times compared are this host's; a few seconds of skew only shift the moment a
time reason gives way to the next one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from backend.broker.waiting_facts import HeldPlace, JobPlace, QueueFacts, WaitingFacts
from backend.core.errors import NotFound
from backend.core.long_tasks import SNOOZED_OUTCOME
from backend.core.states import JobStatus
from backend.tasks.registry import all_tasks, get_task

#: The statuses of a live job that is not running: the only ones with a waiting reason.
WAITING_STATUSES = frozenset({JobStatus.PENDING.value, JobStatus.QUEUED.value})


@dataclass(frozen=True, slots=True)
class Waiting:
    """The four waiting fields of one job (all None for a job that runs or has ended)."""

    reason: str | None = None
    resumes_at: datetime | None = None
    queue_position: int | None = None
    detail: str | None = None


NOT_WAITING = Waiting()


@dataclass(frozen=True, slots=True)
class WaitRow:
    """What the decision reads of a job's row: small, so a served body can keep it."""

    status: str
    task: str
    queue: str
    rq_job_id: str | None
    run_at: datetime | None
    next_retry_at: datetime | None
    depends_on: tuple[str, ...]
    retry_count: int
    max_retries: int
    snoozes: int
    error: str | None
    #: True/False when the attempt before this one was read (single-job GET); None: not read.
    snoozed: bool | None = None
    #: The snooze's reason (that attempt's error text), when read.
    snooze_reason: str | None = None

    @classmethod
    def of(cls, job, *, snoozed: bool | None = None, snooze_reason: str | None = None) -> WaitRow:
        """From a ``Job`` or a list's row (the columns by name)."""
        return cls(
            status=job.status,
            task=job.task,
            queue=job.priority,
            rq_job_id=job.rq_job_id,
            run_at=job.run_at,
            next_retry_at=job.next_retry_at,
            depends_on=tuple(job.depends_on or ()),
            retry_count=job.retry_count or 0,
            max_retries=job.max_retries or 0,
            # Read by name: a row from before migration 0009 has no such column.
            snoozes=getattr(job, "snoozes", 0) or 0,
            error=job.error,
            snoozed=snoozed,
            snooze_reason=snooze_reason,
        )

    @property
    def waits(self) -> bool:
        return self.status in WAITING_STATUSES


def utcnow() -> datetime:
    return datetime.now(UTC)


def may_have_snoozed(row: WaitRow, now: datetime) -> bool:
    """Whether the attempt before this one may have ended by snoozing (worth reading it)."""
    return row.waits and row.snoozes > 0 and _ahead(row.next_retry_at, now)


def snoozed_attempt(attempt) -> tuple[bool, str | None]:
    """(ended by snoozing, its reason) of the attempt before the current one, or of None."""
    if attempt is None or attempt.outcome != SNOOZED_OUTCOME:
        return False, None
    return True, attempt.error


def limited_tasks() -> dict[str, int]:
    """The registered tasks with a concurrency limit, and their limits."""
    return {spec.name: spec.concurrency for spec in all_tasks() if spec.concurrency}


def rate_limited_tasks() -> frozenset[str]:
    """The registered tasks with a rate limit per key."""
    return frozenset(spec.name for spec in all_tasks() if spec.rate_limit)


def _declared_rate(task: str) -> str | None:
    try:
        return get_task(task).rate_limit
    except NotFound:
        return None


#: The reasons a job the rate limiter may hold would show without reading that (they come after).
RATE_HIDDEN = frozenset({"concurrency_limit", "no_worker", "queued"})


def task_limit(task: str) -> int | None:
    try:
        return get_task(task).concurrency
    except NotFound:
        return None


def decide(
    row: WaitRow,
    *,
    waiting_for: list[str] | None,
    facts: QueueFacts | None,
    place: JobPlace | None = None,
    now: datetime | None = None,
    redis_down: bool = False,
    held: HeldPlace | None = None,
) -> Waiting:
    """The waiting fields of a job (the order of the module's docstring).

    ``waiting_for``: the dependencies not ended yet (None: not read; then a job that has
    dependencies is taken to wait for them). ``facts``: None when not read, or (``redis_down``)
    when Redis did not answer. ``place``: the job's place in RQ (single-job GET), or None.
    ``held``: where the rate limiter holds the job, when it does (a list's page read it).
    """
    if not row.waits:
        return NOT_WAITING
    now = now or utcnow()
    time_reason = _time_reason(row, now)
    if time_reason is not None:
        return time_reason
    if waiting_for:
        return Waiting("dependencies", detail=_waiting_for_words(waiting_for))
    if waiting_for is None and row.depends_on:
        # Not read: its dependencies may all have ended (a caller that can, reads them).
        return Waiting("dependencies", detail="waiting for its dependencies to end")
    on_queue = row.status == JobStatus.QUEUED.value and row.rq_job_id
    if facts is None:
        if not redis_down:  # not read (a submission's answer, a webhook): the row's words
            return Waiting(
                "queued", detail=f"queued on {row.queue}" if on_queue else f"about to go on queue {row.queue}"
            )
        if not on_queue:
            return Waiting("queued", detail=f"recorded; goes on queue {row.queue} once Redis answers")
        return Waiting("queued", detail=f"queued on {row.queue} (Redis does not answer: no position)")
    position = place.position if place is not None else None
    if row.queue in facts.paused:
        return Waiting(
            "queue_paused",
            queue_position=position,
            detail=f"queue {row.queue} is paused: no worker starts its jobs until it is resumed"
            + _fair_words(place, position),
        )
    held = held or (place.rate_held if place is not None else None)
    if on_queue and held is not None:
        return _rate_limited(row, held, facts)
    limit = task_limit(row.task)
    if on_queue and limit:
        held = _held_back(row, facts, place)
        if held is not None:
            return Waiting(
                "concurrency_limit",
                queue_position=position,
                detail=f"waiting for a free slot of task {row.task} ({held} running)",
            )
    if facts.workers.get(row.queue, 0) == 0:
        return Waiting(
            "no_worker",
            queue_position=position,
            detail=f"no live worker listens on queue {row.queue}{_fair_words(place, position)}",
        )
    if not on_queue:
        return Waiting("queued", detail=f"about to go on queue {row.queue}")
    if position is None:
        return Waiting("queued", detail=f"queued on {row.queue}")
    ahead = position - 1
    words = "next in line" if not ahead else f"{ahead} job{'s' if ahead > 1 else ''} ahead"
    if _fair_words(place, position):  # an estimate of the fair pop's order, not RQ's list order
        words = f"{'about ' if ahead else ''}{words}{_fair_words(place, position)}"
    return Waiting("queued", queue_position=position, detail=f"queued on {row.queue}, {words}")


def _rate_limited(row: WaitRow, held: HeldPlace, facts: QueueFacts) -> Waiting:
    key = held.key
    # The limit it obeys: the operator's override, else the one its task declares.
    limit = facts.overrides.get(key) or _declared_rate(row.task) or "its limit"
    words = f"rate limit of key {key}: {limit}"
    if held.ahead:
        words += f"; {held.ahead} job{'s' if held.ahead > 1 else ''} of the key ahead"
    if held.resumes_at is None:
        return Waiting("rate_limit", detail=f"{words}; waiting for a free slot")
    # Its own turn (never before now: the facts' script clamps the key's next slot to Redis's now).
    at = datetime.fromtimestamp(held.resumes_at, UTC)
    when = f"next slot at {_words(at)}" if not held.ahead else f"its turn at about {_words(at)}"
    return Waiting("rate_limit", resumes_at=at, detail=f"{words}; {when}")


def _fair_words(place: JobPlace | None, position: int | None) -> str:
    """ " (fair share across N owners)" when ``position`` is the fair pop's estimate across several
    owners, else "" (one owner's jobs go in their list order)."""
    if position is None or place is None or (place.fair_owners or 0) < 2:
        return ""
    return f" (fair share across {place.fair_owners} owners)"


def _time_reason(row: WaitRow, now: datetime) -> Waiting | None:
    if _ahead(row.next_retry_at, now):
        at = row.next_retry_at
        if row.snoozed if row.snoozed is not None else (row.snoozes > 0 and row.error is None):
            words = f"snoozed until {_words(at)}"
            return Waiting(
                "snoozed", resumes_at=at, detail=f"{words}: {row.snooze_reason}" if row.snooze_reason else words
            )
        if row.retry_count:
            words = f"retry {row.retry_count} of {row.max_retries} at {_words(at)}, after a failure"
        else:
            words = f"starts again at {_words(at)}"
        return Waiting("retry_backoff", resumes_at=at, detail=words)
    if _ahead(row.run_at, now):
        return Waiting("scheduled", resumes_at=row.run_at, detail=f"scheduled to start at {_words(row.run_at)}")
    return None


def _needs_facts(row: WaitRow, waiting_for: list[str] | None, now: datetime) -> bool:
    """Whether the reason goes past what the row says (time, dependencies) to Redis's facts."""
    return _time_reason(row, now) is None and not waiting_for and not (waiting_for is None and row.depends_on)


def _held_back(row: WaitRow, facts: QueueFacts, place: JobPlace | None) -> int | None:
    """How many slots are held when RQ's limiter holds this job back, else None."""
    if place is not None:
        return place.held if place.held_back else None
    slots = facts.slots.get(row.task)
    if slots is None or row.rq_job_id in slots.holders or not slots.held_back:
        return None
    # Not holding a slot while some of the task's jobs are held back: it is one of them (or,
    # past MAX_HOLDERS slots, it may hold one: a list's guess, a single GET reads RQ).
    return slots.held


def _ahead(at: datetime | None, now: datetime) -> bool:
    return at is not None and at > now


def _words(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _waiting_for_words(ids: Iterable[str]) -> str:
    ids = list(ids)
    return f"waiting for job {ids[0]} to end" if len(ids) == 1 else f"waiting for {len(ids)} jobs to end"


class WaitingReasons:
    """Decides the waiting fields with this process's cached broker facts."""

    def __init__(self, facts: WaitingFacts):
        self.facts = facts

    def for_job(self, row: WaitRow, *, waiting_for: list[str] | None, now: datetime | None = None) -> Waiting:
        """A single job's fields: the snapshot, plus its place in RQ when the reason needs it."""
        if not row.waits:
            return NOT_WAITING
        now = now or utcnow()
        if not _needs_facts(row, waiting_for, now):
            return decide(row, waiting_for=waiting_for, facts=None, now=now)
        limits = limited_tasks()
        facts = self.facts.snapshot(limits)
        place = None
        if facts is not None and row.status == JobStatus.QUEUED.value and row.rq_job_id:
            place = self.facts.place(
                row.rq_job_id,
                row.queue,
                task=row.task if row.task in limits else None,
                rate_limited=row.task in rate_limited_tasks(),
            )
        return decide(row, waiting_for=waiting_for, facts=facts, place=place, now=now, redis_down=facts is None)

    def for_rows(self) -> RowsWaiting:
        """A decider for the rows of one list: at most one (cached) snapshot for all of them."""
        return RowsWaiting(self.facts)


class RowsWaiting:
    """The waiting fields of a list's rows; the snapshot is taken at the first row that waits."""

    _UNSET = object()

    def __init__(self, facts: WaitingFacts):
        self._facts = facts
        self._snapshot: object = self._UNSET
        self._rate_limited = rate_limited_tasks()
        self.now = utcnow()

    def of(self, row: WaitRow, *, waiting_for: list[str] | None, held: HeldPlace | None = None) -> Waiting:
        """``held``: what ``held_until`` answered for the row's RQ id (None: not held, or not read)."""
        if not row.waits:
            return NOT_WAITING
        if not _needs_facts(row, waiting_for, self.now):
            return decide(row, waiting_for=waiting_for, facts=None, now=self.now)
        if self._snapshot is self._UNSET:
            self._snapshot = self._facts.snapshot(limited_tasks())
        return decide(
            row,
            waiting_for=waiting_for,
            facts=self._snapshot,
            now=self.now,
            redis_down=self._snapshot is None,
            held=held,
        )

    def may_be_held(self, row: WaitRow, waiting: Waiting) -> bool:
        """Whether the rate limiter may hold this row's job: its task has a rate limit and the
        reason decided without that is one the limiter's comes before (its caller then asks
        ``held_until`` once for the page's such rows)."""
        return (
            waiting.reason in RATE_HIDDEN
            and row.task in self._rate_limited
            and row.status == JobStatus.QUEUED.value
            and row.rq_job_id is not None
            and self._snapshot is not None
        )

    def held_until(self, rq_ids: Iterable[str]) -> dict[str, HeldPlace]:
        """Of a page's ``rq_ids``, those the rate limiter holds (one round trip; none when Redis
        does not answer: the rows keep the reason decided without it)."""
        return self._facts.held_until(rq_ids) or {}
