"""Job statuses and the table of moves between them.

Within one attempt a job only moves forward: PENDING -> QUEUED -> PROCESSING -> an end.
A new attempt (an automatic retry, a dead worker's job put back, ``POST /jobs/<id>/retry``)
is the only way back to QUEUED, and it always carries a higher attempt number.
"""

from __future__ import annotations

from enum import Enum
from functools import lru_cache
from typing import NamedTuple

from backend.core.errors import InvalidTransition, JobServiceError, StaleAttempt


class JobStatus(str, Enum):
    #: Recorded in the store, not yet on a queue (Redis was down, or the API died mid-submit).
    PENDING = "PENDING"
    #: On an RQ queue (or deferred / scheduled there), waiting for a worker.
    QUEUED = "QUEUED"
    #: A worker has started it.
    PROCESSING = "PROCESSING"
    #: The task returned; ``result`` holds what it returned.
    COMPLETED = "COMPLETED"
    #: The task raised, timed out or its worker died, and no retries are left.
    FAILED = "FAILED"
    #: Cancelled by a client before it ended.
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE = frozenset(JobStatus) - TERMINAL
#: The same sets as plain strings, as rows and SQL hold them (``Job.status.in_(LIVE_VALUES)``).
TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)
LIVE_VALUES = frozenset(status.value for status in LIVE)

#: Moves allowed within one attempt. A move to the same status is a no-op, not a move.
FORWARD: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.PROCESSING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: Where a new attempt may start from (it always starts PENDING, with a higher attempt number):
#: an automatic retry of a failed attempt or of a dead worker's job,
AUTO_RETRY_FROM = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING})
#: a job that Redis lost before any worker started it,
REQUEUE_FROM = frozenset({JobStatus.PENDING, JobStatus.QUEUED})
#: and a client's ``POST /jobs/<id>/retry`` of an ended job.
MANUAL_RETRY_FROM = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
#: The ends that are not a success: a dependant of such a parent is cancelled (or runs, with
#: ``allow_failure``).
UNSUCCESSFUL = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


# The table as strings: the batch path compares row values, and a str Enum hashes and formats
# more slowly than the str it stands for (f"{JobStatus.QUEUED}" is not even "QUEUED").
_FORWARD_VALUES = {status.value: frozenset(target.value for target in targets) for status, targets in FORWARD.items()}


class Verdict(str, Enum):
    """What ``decide`` says about a move."""

    #: Write it: the move is forward (or a new attempt from an allowed status).
    APPLY = "apply"
    #: The job is already at the target: nothing to write, and not an error.
    SAME = "same"
    #: The job is already past the target and the caller tolerates that: nothing to write.
    BEHIND = "behind"
    #: The caller acts for an attempt that is not the job's current one.
    STALE = "stale"
    #: Backwards, out of an end, or a new attempt from a status that does not allow one.
    REFUSED = "refused"


# Module names for the members: reading ``Verdict.APPLY`` goes through the Enum's descriptor,
# which costs more than the comparison it serves on the batch path.
_APPLY, _SAME, _BEHIND, _STALE, _REFUSED = Verdict


class Move(NamedTuple):
    """A decided move. Immutable (a tuple): ``decide`` hands the same one to every caller asking alike."""

    verdict: Verdict
    #: The job's status and attempt when it was read.
    current: str
    attempt: int
    #: The status asked for; None for a write within the live attempt (progress).
    target: str | None
    #: The attempt the caller acts for (None: the API's own move, any attempt).
    reported: int | None
    #: True when the move starts attempt ``attempt + 1``.
    new_attempt: bool = False

    @property
    def applies(self) -> bool:
        return self.verdict is _APPLY

    @property
    def refused(self) -> bool:
        return self.verdict is _STALE or self.verdict is _REFUSED

    @property
    def next_attempt(self) -> int:
        """The attempt the job is on after the move."""
        return self.attempt + 1 if self.new_attempt and self.applies else self.attempt

    def refusal(self) -> str:
        """Why the move is refused, in the words of a report batch's answer."""
        if self.verdict is _STALE:
            return f"attempt {self.reported} is not the job's current attempt {self.attempt}"
        if self.target is None:
            return f"job has ended ({self.current})"
        reason = f"cannot move from {self.current} to {self.target}"
        return f"{reason}: cannot start a new attempt" if self.new_attempt else reason

    def error(self, job_id: str) -> JobServiceError:
        """The error to raise for a refused move (a 409 either way)."""
        if self.verdict is _STALE:
            return StaleAttempt(job_id, self.reported, self.attempt)
        if self.target is None:
            # Progress names the status the attempt would keep: it is running, or it has ended.
            return InvalidTransition(job_id, self.current, JobStatus.PROCESSING.value, reason="job has ended")
        if self.new_attempt:
            return InvalidTransition(job_id, self.current, self.target, reason="cannot start a new attempt")
        return InvalidTransition(job_id, self.current, self.target)


def decide(
    current: str,
    current_attempt: int,
    target: str | None,
    attempt: int | None = None,
    *,
    new_attempt_from: frozenset | None = None,
    tolerate_behind: bool = False,
    strict: bool = False,
) -> Move:
    """Decide a move of a job at ``current``/``current_attempt`` to ``target``: the one state machine.

    Pure: it reads no store, and both the job commands and the report batch path ask it.

    Args:
        current: the job's status as read (a ``JobStatus`` or its value).
        current_attempt: the job's attempt as read.
        target: the status asked for; None for a write within the live attempt that moves no
            status (progress): allowed while the job has not ended.
        attempt: the attempt the caller acts for; None for the API's own moves.
        new_attempt_from: start attempt ``current_attempt + 1`` (at ``target``, PENDING)
            instead of moving forward, from one of these statuses.
        tolerate_behind: a job already at or past ``target`` is left as it is (BEHIND), not refused.
        strict: a job already at ``target`` is refused too (a client asking twice).

    Returns:
        The ``Move``: APPLY, SAME or BEHIND (nothing to write), STALE or REFUSED (``move.error``).
    """
    if new_attempt_from is None and not tolerate_behind and not strict:
        return _plain(current, current_attempt, target, attempt)
    return _decide(current, current_attempt, target, attempt, new_attempt_from, tolerate_behind, strict)


# The report batch path asks the same few questions (a start, a progress, an end of attempt 1
# or 2) once per report; a Move is immutable, so a remembered answer serves them all, and
# building a new one cost more than the rest of a report's planning.
@lru_cache(maxsize=4096)
def _plain(current: str, current_attempt: int, target: str | None, attempt: int | None) -> Move:
    return _decide(current, current_attempt, target, attempt, None, False, False)


def _decide(
    current: str,
    current_attempt: int,
    target: str | None,
    attempt: int | None,
    new_attempt_from: frozenset | None,
    tolerate_behind: bool,
    strict: bool,
) -> Move:
    if type(current) is not str:
        current = current.value
    if target is not None and type(target) is not str:
        target = target.value
    if attempt is not None and attempt != current_attempt:
        return Move(_STALE, current, current_attempt, target, attempt, new_attempt_from is not None)
    if new_attempt_from is not None:
        # A str and its JobStatus hash alike: the sets of JobStatus answer for plain values.
        verdict = _APPLY if current in new_attempt_from else _REFUSED
        return Move(verdict, current, current_attempt, target, attempt, True)
    if target is None:
        verdict = _APPLY if current in LIVE_VALUES else _REFUSED
    elif current == target and not strict:
        verdict = _SAME
    elif current != target and target in _FORWARD_VALUES[current]:
        verdict = _APPLY
    else:
        verdict = _BEHIND if tolerate_behind else _REFUSED
    return Move(verdict, current, current_attempt, target, attempt)
