"""Re-running database work that PostgreSQL aborted for a conflict: a deadlock (SQLSTATE 40P01)
or a serialization failure (40001).

Why: under READ COMMITTED PostgreSQL may abort one of two transactions that wait for each other
(it picks a victim), and the work is good as it stands: run again, it succeeds. Only database
work is re-run, each time in a fresh transaction: the job commands call Redis before or after
the unit, never inside it, so a re-run never sends a job twice. When conflicts persist the last
error is raised: it is a ``StoreUnavailable`` (503 with Retry-After). SQLite never raises these
(its writers take turns), so there a unit runs once.

Two forms: ``retried(sessions, work)`` runs ``work(session)`` in a fresh transaction until it
commits; ``attempts()`` re-runs a ``with`` block::

    for attempt in conflicts.attempts():
        with attempt, JobRows.transaction(sessions) as rows:
            ...
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from backend.store.engine import transaction

log = logging.getLogger(__name__)

#: The SQLSTATEs of an aborted transaction that would succeed if run again.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})
#: Runs of one unit before its conflict is raised.
TRIES = 5
#: The first backoff's upper bound in seconds; it doubles with each try, jittered (full jitter).
BACKOFF = 0.02

T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a deadlock or serialization failure (worth running the work again)."""
    if not isinstance(exc, DBAPIError):
        return False
    return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES


class Attempt:
    """One run of a unit: a context manager that swallows a conflict and remembers it."""

    def __init__(self) -> None:
        self.conflict: BaseException | None = None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and is_conflict(exc):
            self.conflict = exc
            return True
        return False


def attempts(tries: int = TRIES) -> Iterator[Attempt]:
    """Attempts at a unit of database work, until one ends without a conflict.

    Raises:
        StoreUnavailable: the last attempt's conflict, when all ``tries`` met one.
    """
    for number in range(1, tries + 1):
        attempt = Attempt()
        yield attempt
        if attempt.conflict is None:
            return
        if number == tries:
            raise attempt.conflict
        log.info("database conflict (%s), run %d of %d: running again", _state(attempt.conflict), number, tries)
        # Full jitter: two transactions aborted together do not collide again in step.
        time.sleep(random.uniform(0, BACKOFF * 2 ** (number - 1)))


def retried(sessions: sessionmaker[Session], work: Callable[[Session], T], *, tries: int = TRIES) -> T:
    """``work(session)`` in a fresh transaction, committed; run again on a conflict.

    Raises:
        StoreUnavailable: conflicts persisted over ``tries`` runs.
    """
    for attempt in attempts(tries):
        with attempt, transaction(sessions) as session:
            return work(session)
    raise AssertionError("unreachable: attempts() raises or a run returns")


def _state(exc: BaseException) -> str:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) or type(exc).__name__
