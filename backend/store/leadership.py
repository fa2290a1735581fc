"""Leadership on PostgreSQL: one holder at a time of a named lock, among every host of a store.

A recurring pass that must not run twice at once (the reconciler's) is led by whoever holds a
PostgreSQL advisory lock, not by a Redis key alone: a Redis failover that loses the key cannot
let a second leader in, since the lock lives in the store of record. The lock is taken with
``pg_try_advisory_xact_lock`` in a transaction that spans the pass, so it works behind pgbouncer
in transaction mode (a session lock could be taken on one server connection and released on
another), and it ends with the transaction: when the holder dies or its connection is killed,
PostgreSQL frees it at once. The open transaction has written nothing and, on READ COMMITTED,
holds no snapshot between statements, so it keeps nothing from vacuum.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

#: The advisory lock key of the reconciler's leadership ("jobsrecn").
RECONCILER_KEY = 0x6A6F6273_7265636E

_TRY = text("SELECT pg_try_advisory_xact_lock(:key)")
_ALIVE = text("SELECT 1")


def supported(engine: Engine) -> bool:
    """Whether ``engine``'s database keeps leadership itself (PostgreSQL); SQLite does not."""
    return engine.dialect.name == "postgresql"


class Leader:
    """The holder's side of a lock taken by ``lead``: ``holds`` says whether it still leads."""

    def __init__(self, connection: Connection, key: int):
        self._connection = connection
        self.key = key
        self._lost = False

    def holds(self) -> bool:
        """Whether the lock is still this holder's (one round trip on its connection).

        The lock ends only with its transaction, so the transaction still answering proves it
        held; a killed connection or an aborted transaction means another may lead by now.
        """
        if self._lost:
            return False
        try:
            self._connection.execute(_ALIVE)
        except DBAPIError as exc:
            log.warning("leadership %#x lost: its connection failed (%s)", self.key, exc.__class__.__name__)
            self._lost = True
        return not self._lost


@contextmanager
def lead(engine: Engine, key: int) -> Iterator[Leader | None]:
    """Hold the advisory lock ``key`` for the block; yields None when another holder has it.

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            if not connection.execute(_TRY, {"key": key}).scalar_one():
                yield None
                return
            yield Leader(connection, key)
        finally:
            # Rolling back ends the transaction and with it the lock; a connection that died
            # has lost both already (the pool discards it).
            with suppress(DBAPIError):
                transaction.rollback()
