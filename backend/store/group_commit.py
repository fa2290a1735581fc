"""Group commit: the writes that threads of one process queue at the same moment share one transaction.

Why: every submission used to pay a whole transaction of its own. On SQLite one transaction writes
at a time (``sqlite_writers``: a turn on a file lock), so concurrent submissions queued for the
turn: under 8 clients about 30% of a submission's time was that wait (py-spy, issue 17). On
PostgreSQL each paid its commit (a WAL flush) and the pool's ping. Here a thread queues its write,
then takes the leader's lock; the holder writes everything queued by then in one transaction
(``GroupCommit.write``), so the threads that queued meanwhile find theirs committed when their turn
comes, and nobody waits longer than one batch more than before.

A batch that a row's fault refuses (a unique key already taken, a value the store refuses) is
written again one by one, so that only the faulty write fails; a store that is down or busy fails
every write of the batch alike (503 for each request).
"""

from __future__ import annotations

import threading

from sqlalchemy.exc import DataError, IntegrityError, OperationalError


class _Interrupted(Exception):
    """Why a write failed: the request leading its group commit was interrupted before the commit."""

    def __str__(self) -> str:
        return "the transaction this write joined was interrupted before it committed; try again"


class Pending:
    """One write waiting for whichever thread leads the next commit; ``done`` once it was tried."""

    __slots__ = ("shape", "params", "task", "status", "kwargs_rows", "job", "done", "error")

    def __init__(self, shape: tuple, params, task: str, status: str, kwargs_rows: list, job=None):
        self.shape, self.params, self.task, self.status = shape, params, task, status
        self.kwargs_rows, self.job = kwargs_rows, job
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Writes queued by concurrent threads, committed together by the thread holding the lead."""

    def __init__(self) -> None:
        self._leader = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[Pending] = []

    def commit(self, mine: Pending) -> None:
        """Queue ``mine`` and return once it is committed.

        Raises:
            Exception: what its write raised (SQLAlchemy's errors, as a session would raise them).
        """
        with self._queue_lock:
            self._queue.append(mine)
        try:
            with self._leader:
                # A leader that took ``mine`` wrote it before letting go; else it is still queued.
                if not mine.done:
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    self._write_batch(batch)
        except BaseException:
            # This request was interrupted (gevent.Timeout, gunicorn's abort) while it waited: a
            # write no leader took yet leaves the queue, so no later leader records a job whose
            # request failed. One a leader took has that leader's outcome.
            with self._queue_lock:
                if any(pending is mine for pending in self._queue):
                    self._queue.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error

    def _write_batch(self, batch: list[Pending]) -> None:
        """Write ``batch``; each write's outcome (None, or the error to raise) is left on it."""
        try:
            self.write(batch)
        except (IntegrityError, DataError) as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for pending in batch:  # one by one: only the faulty one fails
                    self._write_batch([pending])
        except Exception as exc:  # the store down or busy: every write of the batch fails alike
            for pending in batch:
                pending.error = exc
        except BaseException:
            # The leader's own request was interrupted mid-write: its transaction did not finish,
            # so each write it had not settled fails as a store that did not answer (503, try
            # again), never as committed; the interruption goes on in the leader's thread only.
            for pending in batch:
                if not pending.done:
                    pending.error = OperationalError("group commit", None, _Interrupted())
            raise
        finally:
            for pending in batch:
                pending.done = True

    def write(self, batch: list[Pending]) -> None:
        """Write and commit ``batch`` in one transaction (raising as SQLAlchemy raises)."""
        raise NotImplementedError
