"""SQLite writers take turns on a file lock instead of sqlite3's busy handler.

SQLite lets one transaction write at a time. A writer that finds the file locked sleeps in
sqlite3's busy handler (1, 2, 5, ... up to 100 ms) and tries again, so under concurrent
submissions a write waits far longer than the writer ahead of it held the lock. Here each
connection takes an exclusive ``flock`` on ``<database>-writers`` just before its first write
statement and lets go when its transaction ends: the next writer, in this process or another,
wakes as soon as the lock is free. The lock spans exactly the transaction's hold of SQLite's
own write lock, so it adds no wait that SQLite would not impose.

Nothing waits for the lock while it may hold SQLite's: a transaction that wrote without a turn
finishes without one, and a thread that holds the turn through one connection writes through
a second one without it (SQLite's busy handler then decides, as before).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading

_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP"})
_holder = threading.local()


def _is_write(sql: str) -> bool:
    return sql.lstrip()[:7].split(None, 1)[0].upper() in _WRITES if sql.strip() else False


class WriterTurnConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` (pass it as ``factory``) whose writes take turns."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._turn_fd: int | None = None
        self._holding = False
        self._owner = 0
        path = os.fspath(database)
        if path and path != ":memory:" and not path.startswith("file:"):
            self._turn_fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT, 0o644)

    def cursor(self, factory=None):
        return super().cursor(factory or WriterTurnCursor)

    def take_turn(self) -> None:
        if self._turn_fd is None or self._holding:
            return
        if self.in_transaction:
            # It wrote already without a turn, so it may hold SQLite's lock: waiting for the
            # turn now could wait for a writer that waits for it.
            return
        other = getattr(_holder, "connection", None)
        if other is not None and other._holding and other._owner == threading.get_ident():
            return  # this thread's turn is held by its other connection: never wait for itself
        fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
        self._holding = True
        self._owner = threading.get_ident()
        _holder.connection = self

    def end_turn(self) -> None:
        if self._holding:
            self._holding = False
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    def end_turn_unless_in_transaction(self) -> None:
        if not self.in_transaction:
            self.end_turn()

    def commit(self) -> None:
        self._ending(super().commit)

    def rollback(self) -> None:
        self._ending(super().rollback)

    def _ending(self, end) -> None:
        try:
            end()
        finally:
            self.end_turn_unless_in_transaction()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()
            if self._turn_fd is not None:
                os.close(self._turn_fd)
                self._turn_fd = None


class WriterTurnCursor(sqlite3.Cursor):
    def execute(self, sql, parameters=(), /):
        return self._in_turn(super().execute, sql, parameters)

    def executemany(self, sql, seq_of_parameters, /):
        return self._in_turn(super().executemany, sql, seq_of_parameters)

    def _in_turn(self, run, sql, parameters):
        connection = self.connection
        if _is_write(sql):
            connection.take_turn()
        try:
            return run(sql, parameters)
        finally:
            connection.end_turn_unless_in_transaction()
